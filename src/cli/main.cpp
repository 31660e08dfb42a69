// oft command-line entry point (subcommands are wired in cli/commands.cpp).
#include <cstdio>
int main() { std::puts("oft"); return 0; }
