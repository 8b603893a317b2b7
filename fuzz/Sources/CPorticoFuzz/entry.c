#include <stddef.h>
#include <stdint.h>
#include "CPorticoFuzz.h"

// Both from the fuzzer: libFuzzer's driver, and the harness's callback (Entry.swift).
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

// Runs libFuzzer as its own main would.
int PorticoFuzz_main(int argc, char **argv) {
    return LLVMFuzzerRunDriver(&argc, &argv, LLVMFuzzerTestOneInput);
}
