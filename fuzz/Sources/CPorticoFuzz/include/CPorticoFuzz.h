// The fuzz executable's entry: SwiftPM links an executable target with its main renamed to
// `<target>_main`, which the Swift harness (no main of its own) does not define.
#pragma once
int PorticoFuzz_main(int argc, char **argv);
