#!/usr/bin/env python3
"""The aioice side of natkit-ice's interoperability test (tests/interop_aioice.rs).

Runs one aioice ICE agent (https://pypi.org/project/aioice/) on loopback and
talks to the test over stdin/stdout, one JSON object per line:

1. Gathers host candidates on the addresses given with --address (127.0.0.1
   by default) and prints its description:
   {"type": "description", "ufrag", "pwd", "candidates": [{"foundation",
   "priority", "host", "port", "type"}]}
2. Reads natkit's description from stdin (one line, same shape without
   "type"), adds its candidates, signals end-of-candidates and runs aioice's
   connect(). When it returns, prints
   {"type": "connected", "role", "ms", "local": {...}, "remote": {...},
   "nominated": [...]} with the role aioice ended in (after any role
   conflict), the pair it sends data on and the pairs nominated so far.
3. Echoes every datagram aioice's recv() returns over the nominated pair as
   b"E" + the datagram reversed, so the test can tell an echo from a
   reflection of its own datagram.
4. Stops on a b"bye" datagram, on stdin closing (the test went away) or when
   --lifetime runs out, closes the connection and prints
   {"type": "closed", "reason", "echoed", "local", "remote", "nominated"};
   exits 0 only after a "bye".

Errors print {"type": "error", "message"} and exit 1. aioice's own log (INFO)
goes to stderr, which the test shows when it fails.
"""

import argparse
import asyncio
import json
import logging
import sys
import time

try:
    import aioice
    import aioice.ice
except ImportError:  # the test checks first; this is for people running it by hand
    sys.stderr.write(
        "peer.py needs the Python package aioice: python3 -m pip install aioice "
        "(or bash scripts/deps/aioice.sh)\n"
    )
    sys.exit(2)


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def candidate_json(c):
    return {
        "foundation": c.foundation,
        "priority": c.priority,
        "host": c.host,
        "port": c.port,
        "type": c.type,
    }


def nominated(conn):
    """The pair aioice sends data on now ("local", "remote": its nominated
    pair of component 1) and every pair of its check list it nominated or saw
    nominated ("nominated"). aioice has no public accessor for either.

    As controlling agent aioice uses RFC 5245 aggressive nomination: every
    check it sends carries USE-CANDIDATE, so every pair it checks
    successfully, triggered checks included, ends nominated, and the data
    pair is whichever of them completed last.
    """
    pair = conn._nominated.get(1)
    return {
        "local": candidate_json(pair.local_candidate) if pair else None,
        "remote": candidate_json(pair.remote_candidate) if pair else None,
        "nominated": [
            {
                "local": candidate_json(p.local_candidate),
                "remote": candidate_json(p.remote_candidate),
            }
            for p in conn._check_list
            if p.nominated
        ],
    }


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--role", choices=["controlling", "controlled"], required=True)
    p.add_argument(
        "--address",
        action="append",
        help="host address to gather a candidate on (repeatable; default 127.0.0.1)",
    )
    p.add_argument("--connect-timeout", type=float, default=15.0)
    p.add_argument("--lifetime", type=float, default=60.0)
    p.add_argument("--verbose", action="store_true", help="aioice DEBUG log (every STUN message)")
    return p.parse_args()


async def run(args):
    loop = asyncio.get_running_loop()
    addresses = args.address or ["127.0.0.1"]

    # aioice's get_host_addresses() skips 127.0.0.1 (and ::1), so on a
    # loopback-only test it would gather nothing: offer exactly the addresses
    # the test asked for. gather_candidates() looks the function up in
    # aioice.ice's globals at call time, so replacing it there is enough.
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: list(addresses)

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    conn = aioice.Connection(
        ice_controlling=(args.role == "controlling"),
        components=1,
        use_ipv6=False,
    )
    try:
        await conn.gather_candidates()
        if not conn.local_candidates:
            raise RuntimeError(f"aioice gathered no candidate on {addresses}")
        emit(
            {
                "type": "description",
                "ufrag": conn.local_username,
                "pwd": conn.local_password,
                "candidates": [candidate_json(c) for c in conn.local_candidates],
            }
        )

        line = await asyncio.wait_for(reader.readline(), args.connect_timeout)
        if not line:
            raise RuntimeError("stdin closed before natkit's description arrived")
        remote = json.loads(line)
        conn.remote_username = remote["ufrag"]
        conn.remote_password = remote["pwd"]
        for c in remote["candidates"]:
            await conn.add_remote_candidate(
                aioice.Candidate(
                    foundation=c["foundation"],
                    component=1,
                    transport="udp",
                    priority=int(c["priority"]),
                    host=c["host"],
                    port=int(c["port"]),
                    type=c["type"],
                )
            )
        # End-of-candidates (RFC 8838 section 8): without it connect() never
        # reports failure, it waits for more candidates.
        await conn.add_remote_candidate(None)

        t0 = time.monotonic()
        await asyncio.wait_for(conn.connect(), args.connect_timeout)
        emit(
            {
                "type": "connected",
                "role": "controlling" if conn.ice_controlling else "controlled",
                "ms": round((time.monotonic() - t0) * 1000.0, 1),
                **nominated(conn),
            }
        )

        echoed = 0
        eof = asyncio.ensure_future(reader.read())
        try:
            deadline = loop.time() + args.lifetime
            while True:
                recv = asyncio.ensure_future(conn.recv())
                done, _ = await asyncio.wait(
                    {recv, eof},
                    timeout=max(0.0, deadline - loop.time()),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if recv not in done:
                    recv.cancel()
                    reason = "stdin closed" if eof in done else "lifetime over"
                    emit({"type": "closed", "reason": reason, "echoed": echoed})
                    return 1
                data = recv.result()
                if data == b"bye":
                    emit(
                        {"type": "closed", "reason": "bye", "echoed": echoed, **nominated(conn)}
                    )
                    return 0
                await conn.send(b"E" + data[::-1])
                echoed += 1
        finally:
            eof.cancel()
    finally:
        await conn.close()


def main():
    args = parse_args()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(name)s %(message)s",
    )
    try:
        code = asyncio.run(run(args))
    except Exception as e:  # report, in the protocol, why the peer gave up
        emit({"type": "error", "message": f"{type(e).__name__}: {e}"})
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
