"""Closing a listening socket without resetting a connection the kernel completed for it.

Closing a listening socket resets every connection in its accept queue, so a worker
accepts what is queued before it closes. That alone leaves a window: a handshake that
completes between the last accept (EAGAIN) and close() is reset, and its client, which
believes it is connected, loses the request it sends. Linux lets a socket filter drop
packets before TCP sees them; on a listening socket a filter that drops bare SYNs stops
new handshakes while the queued connections (and any handshake already past its SYN)
still complete. A client whose SYN was dropped retries it after about a second and then
reaches another worker's socket, or is refused: it never believes it is connected.
"""

from __future__ import annotations

import ctypes
import logging
import socket
import struct

log = logging.getLogger("warmstart.worker")

SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)  # Linux; Python does not export it

# Classic BPF, run with the packet starting at the TCP header (byte 13: the flags):
#   ldb [13]; jset #ACK, keep, drop; drop: ret #0; keep: ret #-1
_TCP_FLAGS = 13
_ACK = 0x10
_PROGRAM = (
    (0x30, 0, 0, _TCP_FLAGS),  # BPF_LD | BPF_B | BPF_ABS
    (0x45, 1, 0, _ACK),  # BPF_JMP | BPF_JSET | BPF_K: ACK set -> keep
    (0x06, 0, 0, 0),  # BPF_RET: drop (a bare SYN)
    (0x06, 0, 0, 0xFFFFFFFF),  # BPF_RET: keep the whole packet
)
_INSTRUCTIONS = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *insn) for insn in _PROGRAM))
# struct sock_fprog { unsigned short len; struct sock_filter *filter; }
_FPROG = struct.pack("HP", len(_PROGRAM), ctypes.addressof(_INSTRUCTIONS))


def refuse_new_handshakes(listener: socket.socket) -> bool:
    """Drop new SYNs to this listening socket; False where the kernel does not allow it
    (then closing it keeps the short window described above)."""
    try:
        listener.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, _FPROG)
    except OSError as exc:
        log.debug("cannot filter new connections before closing %s: %s", listener, exc)
        return False
    return True
