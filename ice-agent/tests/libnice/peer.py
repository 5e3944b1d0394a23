#!/usr/bin/python3
"""The libnice side of natkit-ice's libnice interoperability test
(tests/interop_libnice.rs).

Runs one libnice agent (RFC 5245 mode, regular nomination) on loopback
through GObject introspection (Debian: gir1.2-nice-0.1, python3-gi; run it
with Debian's /usr/bin/python3) and talks to the test over stdin/stdout, one
JSON object per line, in the shape of tests/aioice/peer.py:

1. Gathers UDP host candidates on the addresses given with --address
   (127.0.0.1 by default) and prints its description:
   {"type": "description", "ufrag", "pwd", "candidates": [{"foundation",
   "priority", "host", "port", "type"}]}
2. Reads natkit's description from stdin (one line, same shape without
   "type"), gives libnice its credentials and candidates, and starts the
   checks.
3. Prints {"type": "state", "state"} on every component state change and
   {"type": "connected", "role", "local", "remote"} (the selected pair) once
   the component is READY.
4. Runs until stdin closes or --lifetime runs out; prints
   {"type": "closed", "reason", "state"} and exits 0.

Errors print {"type": "error", "message"} and exit 1.
"""

import argparse
import ctypes
import json
import os
import select
import sys
import time

try:
    import gi

    gi.require_version("Nice", "0.1")
    from gi.repository import GLib, Nice
except (ImportError, ValueError):  # the test checks first; this is for people running it by hand
    sys.stderr.write(
        "peer.py needs libnice's introspection data and python3-gi: "
        "bash scripts/deps/libnice.sh (apt-get install gir1.2-nice-0.1 python3-gi)\n"
    )
    sys.exit(2)


def emit(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def fail(message):
    emit({"type": "error", "message": message})
    sys.exit(1)


STATES = {
    Nice.ComponentState.DISCONNECTED: "disconnected",
    Nice.ComponentState.GATHERING: "gathering",
    Nice.ComponentState.CONNECTING: "connecting",
    Nice.ComponentState.CONNECTED: "connected",
    Nice.ComponentState.READY: "ready",
    Nice.ComponentState.FAILED: "failed",
}


def candidate_json(agent, c):
    # "a=candidate:FOUNDATION 1 UDP PRIORITY HOST PORT typ TYPE ...": the
    # SDP form, because introspection reads NiceCandidate's priority wrong.
    f = agent.generate_local_candidate_sdp(c).split()
    return {
        "foundation": f[0].split(":", 1)[1],
        "priority": int(f[3]),
        "host": f[4],
        "port": int(f[5]),
        "type": f[7],
    }


def address_json(c):
    return {"host": c.addr.dup_string(), "port": c.addr.get_port()}


def attach_recv(agent, stream, ctx_default):
    """nice_agent_attach_recv through ctypes: introspection cannot pass its
    callback usefully, and without it libnice reads no datagram (so it would
    answer no check)."""
    lib = ctypes.CDLL("libnice.so.10")
    glib = ctypes.CDLL("libglib-2.0.so.0")
    glib.g_main_context_default.restype = ctypes.c_void_p
    get = ctypes.pythonapi.PyCapsule_GetPointer
    get.restype = ctypes.c_void_p
    get.argtypes = [ctypes.py_object, ctypes.c_char_p]
    agent_ptr = get(agent.__gpointer__, None)
    recv_func = ctypes.CFUNCTYPE(
        None,
        ctypes.c_void_p,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_void_p,
        ctypes.c_void_p,
    )
    # Application data is not part of this test: drop it.
    cb = recv_func(lambda *_: None)
    lib.nice_agent_attach_recv.restype = ctypes.c_int
    lib.nice_agent_attach_recv.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint,
        ctypes.c_uint,
        ctypes.c_void_p,
        recv_func,
        ctypes.c_void_p,
    ]
    assert ctx_default is not None
    if not lib.nice_agent_attach_recv(agent_ptr, stream, 1, glib.g_main_context_default(), cb, None):
        fail("nice_agent_attach_recv failed")
    return cb  # keep the callback alive


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--role", choices=["controlling", "controlled"], required=True)
    p.add_argument("--address", action="append", default=[])
    p.add_argument("--lifetime", type=float, default=60.0)
    args = p.parse_args()
    deadline = time.monotonic() + args.lifetime

    ctx = GLib.MainContext.default()
    agent = Nice.Agent.new_full(
        ctx, Nice.Compatibility.RFC5245, Nice.AgentOption.REGULAR_NOMINATION
    )
    agent.set_property("ice-tcp", False)
    agent.set_property("controlling-mode", args.role == "controlling")
    for a in args.address or ["127.0.0.1"]:
        addr = Nice.Address.new()
        if not addr.set_from_string(a):
            fail(f"not an address: {a}")
        agent.add_local_address(addr)
    stream = agent.add_stream(1)
    keep = attach_recv(agent, stream, ctx)

    gathered = []
    agent.connect("candidate-gathering-done", lambda _a, s: gathered.append(s))
    state = {"now": "disconnected", "reported": False}

    def on_state(_a, _s, _c, st):
        state["now"] = STATES.get(st, str(st))
        emit({"type": "state", "state": state["now"]})

    if not agent.gather_candidates(stream):
        fail("gather_candidates failed")
    while not gathered:
        if time.monotonic() > deadline:
            fail("gathering did not finish")
        ctx.iteration(True)
    ok, ufrag, pwd = agent.get_local_credentials(stream)
    if not ok:
        fail("no local credentials")
    cands = [candidate_json(agent, c) for c in agent.get_local_candidates(stream, 1)]
    emit({"type": "description", "ufrag": ufrag, "pwd": pwd, "candidates": cands})
    # State changes from here on (gathering's come before the description).
    agent.connect("component-state-changed", on_state)
    # get_selected_pair cannot be called through introspection; the signal
    # carries the pair.
    selected = []
    agent.connect(
        "new-selected-pair-full",
        lambda _a, _s, _c, lc, rc: selected.append((address_json(lc), address_json(rc))),
    )

    buf = b""
    reason = "lifetime"
    while time.monotonic() < deadline:
        while ctx.pending():
            ctx.iteration(False)
        if state["now"] == "ready" and not state["reported"] and selected:
            state["reported"] = True
            local, remote = selected[-1]
            role = "controlling" if agent.get_property("controlling-mode") else "controlled"
            emit({"type": "connected", "role": role, "local": local, "remote": remote})
        r, _, _ = select.select([0], [], [], 0.005)
        if not r:
            continue
        chunk = os.read(0, 65536)
        if not chunk:
            reason = "stdin closed"
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            desc = json.loads(line)
            if not agent.set_remote_credentials(stream, desc["ufrag"], desc["pwd"]):
                fail("set_remote_credentials failed")
            remote = []
            for c in desc["candidates"]:
                sdp = "a=candidate:{} 1 UDP {} {} {} typ {}".format(
                    c["foundation"], c["priority"], c["host"], c["port"], c["type"]
                )
                rc = agent.parse_remote_candidate_sdp(stream, sdp)
                if rc is None:
                    fail(f"libnice refused natkit's candidate {sdp}")
                remote.append(rc)
            if agent.set_remote_candidates(stream, 1, remote) != len(remote):
                fail("set_remote_candidates did not take every candidate")
    emit({"type": "closed", "reason": reason, "state": state["now"]})
    del keep


if __name__ == "__main__":
    main()
