#!/usr/bin/env python3
"""Which module caused the CPU time in a profile.

    perf record -e cpu-clock -F 999 -g -p <pid> -- sleep 5
    perf script | python3 bench/perf/owner.py

Each sample is charged to the module of its nearest frame that is not Swift runtime work
(retain/release, exclusivity checks, malloc, metadata, copies): so retain/release is charged
to the code that asked for it, and kernel time to the module that made the system call.
"""
import collections
import re
import sys

RUNTIME = re.compile(r'swift_|RefCounts|AccessSet|malloc|free|_int_|memmove|memcpy|__GI_|Metadata|swift::|outlined|initializeWithCopy|destroy|assignWith|__tls_get_addr')
MODULES = ['NIOHTTP2', 'NIOHPACK', 'NIOSSL', 'CNIOBoringSSL', 'NIOPosix', 'NIOCore', 'PorticoGateway', 'PorticoManager', 'PorticoStore', 'NIOHTTP1', 'AsyncHTTPClient']


MANGLED = re.compile(r'^\$s(\d+)')
# BoringSSL's own C functions (the server core calls them directly, with no NIOSSL frame
# between), by their prefixes.
BORINGSSL = re.compile(r'^(SSL_|BIO_|EVP_|ERR_|CRYPTO_|OPENSSL_|RSA_|EC_|BN_|bn_|aes|gcm_|GFp_|ChaCha|CRYPTO|x25519|X25519|ecp_nistz|p256|sha\d|SHA\d|bssl::|ssl_|tls_|tls13|d2i_|i2d_|X509|asn1|ASN1|ec_|fiat_|poly1305|HMAC|HKDF)')


def module(frame):
    if BORINGSSL.match(frame):
        return 'BoringSSL'
    # A Swift symbol names its module first (`$s14PorticoGateway...`); searching the whole
    # name would charge a Portico function taking an NIOCore type to NIOCore.
    mangled = MANGLED.match(frame)
    if mangled:
        length = int(mangled.group(1))
        start = mangled.end()
        name = frame[start:start + length]
        if name in MODULES:
            return 'BoringSSL' if name == 'CNIOBoringSSL' else name
    for name in MODULES:
        if name in frame:
            return 'BoringSSL' if name == 'CNIOBoringSSL' else name
    return None


def samples(lines, with_kernel=False):
    """Each sample's stack, innermost frame first (with `with_kernel`, paired with whether
    that frame is in the kernel)."""
    stack = []
    kernel = None
    for line in lines:
        line = line.rstrip('\n')
        if not line.strip():
            if stack:
                yield (stack, kernel) if with_kernel else stack
            stack = []
            kernel = None
        elif line[:1] in '\t ':
            if kernel is None:
                kernel = '[kernel.kallsyms]' in line
            parts = line.strip().split(' ', 1)
            if len(parts) == 2:
                stack.append(parts[1].rsplit(' (', 1)[0])
    if stack:
        yield (stack, kernel) if with_kernel else stack


def owner_of(stack):
    """The module charged for a sample: that of its nearest frame that is not runtime work."""
    for frame in stack:
        if RUNTIME.search(frame):
            continue
        found = module(frame)
        if found:
            return found
    return 'other'


def main():
    counts = collections.Counter()
    total = 0
    for stack in samples(sys.stdin):
        total += 1
        counts[owner_of(stack)] += 1
    for name, count in counts.most_common():
        print(f"{100 * count / max(total, 1):5.1f}%  {name}")


if __name__ == '__main__':
    main()
