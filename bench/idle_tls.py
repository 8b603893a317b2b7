#!/usr/bin/env python3
"""Opens N kept-alive TLS connections to a server and holds them idle.

    idle_tls.py PORT N

Each connection completes its handshake, sends one HTTP/1.1 GET /healthz and reads the
answer, then stays open without traffic. When all are open the script prints
"open N" on stdout and waits until stdin closes (the caller measures the server's memory
meanwhile), then closes everything.
"""
import asyncio
import ssl
import sys


async def main(port: int, count: int) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["http/1.1"])
    gate = asyncio.Semaphore(200)
    writers = []
    failures = 0

    async def open_one() -> None:
        nonlocal failures
        async with gate:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n")
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                writers.append(writer)
            except Exception as error:  # counted and reported: a refused connection is a result too
                failures += 1
                if failures <= 3:
                    print(f"idle_tls: connection failed: {error!r}", file=sys.stderr)

    await asyncio.gather(*(open_one() for _ in range(count)))
    print(f"open {len(writers)} failed {failures}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for writer in writers:
        writer.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
