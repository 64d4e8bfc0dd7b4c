"""A TCP proxy on loopback that breaks connections on purpose, for retry tests.

It sits between a client and the live server and relays bytes both ways. A
fault armed with ``drop_response()`` lets the next ``POST /m2/`` request reach the
server whole and then closes the client's connection as the server's answer
starts: the server has accepted the batch, the client never hears so and
retries. ``drop_upload(after)`` closes both sides once ``after`` bytes of the
next such request have been relayed: the server sees a body cut short.
Every loop is bounded: sockets time out, and ``close()`` ends all threads.
"""

from __future__ import annotations

import socket
import struct
import threading

TRIGGER = b"POST /m2/"
TIMEOUT = 15.0


class FaultyProxy:
    """Relays 127.0.0.1:<port> to the target port, with faults armed one at a time."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        self.faults: list[tuple[str, int]] = []
        self.dropped = 0
        self.posts = 0
        self.stopping = threading.Event()
        self.sockets: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]

    def __enter__(self) -> FaultyProxy:
        self.threads[0].start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def drop_response(self) -> None:
        """The next POST /m2/ reaches the server; the client never gets the answer."""
        with self.lock:
            self.faults.append(("response", 0))

    def drop_upload(self, after: int) -> None:
        """The next POST /m2/ is cut after ``after`` bytes; the server sees a short body."""
        with self.lock:
            self.faults.append(("upload", after))

    def close(self) -> None:
        self.stopping.set()
        with self.lock:
            for sock in self.sockets:
                close_quietly(sock)
        for thread in self.threads:
            thread.join(TIMEOUT)
        self.listener.close()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                downstream, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port), TIMEOUT)
            downstream.settimeout(TIMEOUT)
            with self.lock:
                self.sockets += [downstream, upstream]
            connection = Connection(self, downstream, upstream)
            for target in (connection.upload, connection.download):
                thread = threading.Thread(target=target, daemon=True)
                self.threads.append(thread)
                thread.start()

    def take_fault(self) -> tuple[str, int] | None:
        with self.lock:
            self.posts += 1
            return self.faults.pop(0) if self.faults else None


class Connection:
    """One client connection and its upstream twin."""

    def __init__(self, proxy: FaultyProxy, downstream: socket.socket, upstream: socket.socket):
        self.proxy = proxy
        self.downstream = downstream
        self.upstream = upstream
        self.fault: tuple[str, int] | None = None
        self.relayed = 0
        self.seen = b""

    def upload(self) -> None:
        """Client to server; notices each POST /m2/ and applies an upload fault."""
        while True:
            data = receive(self.downstream)
            if not data:
                break
            self.seen = (self.seen + data)[-4096:]
            if TRIGGER in self.seen:
                self.seen = b""
                self.fault = self.proxy.take_fault()
                self.relayed = 0
            if self.fault is not None and self.fault[0] == "upload":
                room = self.fault[1] - self.relayed
                if len(data) >= room:
                    send(self.upstream, data[:room])
                    self.break_both()
                    return
                self.relayed += len(data)
            if not send(self.upstream, data):
                break
        close_quietly(self.upstream)

    def download(self) -> None:
        """Server to client; swallows the answer to a POST armed with a response fault."""
        while True:
            data = receive(self.upstream)
            if not data:
                break
            if self.fault is not None and self.fault[0] == "response":
                self.break_both()
                return
            if not send(self.downstream, data):
                break
        close_quietly(self.downstream)

    def break_both(self) -> None:
        with self.proxy.lock:
            self.proxy.dropped += 1
        self.fault = None
        for sock in (self.downstream, self.upstream):
            try:
                # Reset rather than close politely: the peer sees the connection die.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            close_quietly(sock)


def receive(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def send(sock: socket.socket, data: bytes) -> bool:
    try:
        sock.sendall(data)
    except OSError:
        return False
    return True


def close_quietly(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class Outage:
    """A TCP relay to a database that can be cut and restored, on one fixed loopback port.

    ``cut(hang=False)`` resets every relayed connection and stops listening: the
    database is down (connections refused). ``cut(hang=True)`` resets them too but
    keeps accepting new connections and never answers them: the database hangs.
    ``restore()`` relays again, on the same port.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = []
        self.hanging = False
        self.listener: socket.socket | None = None
        self.port = 0
        self.thread: threading.Thread | None = None
        self.restore()

    def restore(self) -> None:
        with self.lock:
            self.hanging = False
            held, self.sockets = self.sockets, []
        for sock in held:  # connections that hung while cut: gone, as after a restart
            reset(sock)
        if self.listener is None:
            self.listener = socket.create_server(("127.0.0.1", self.port))
            self.listener.settimeout(0.2)
            self.port = self.listener.getsockname()[1]
            self.thread = threading.Thread(target=self._accept, args=(self.listener,))
            self.thread.daemon = True
            self.thread.start()

    def cut(self, hang: bool = False) -> None:
        with self.lock:
            self.hanging = hang
            held, self.sockets = self.sockets, []
            listener = None if hang else self.listener
            if not hang:
                self.listener = None
        for sock in held:
            reset(sock)
        if listener is not None:
            listener.close()
            assert self.thread is not None
            self.thread.join(TIMEOUT)

    def close(self) -> None:
        self.cut()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                downstream, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed
            with self.lock:
                self.sockets.append(downstream)
                if self.hanging:
                    continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), TIMEOUT)
            except OSError:
                reset(downstream)
                continue
            upstream.settimeout(None)
            downstream.settimeout(None)
            with self.lock:
                self.sockets.append(upstream)
            for source, sink in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=pipe, args=(source, sink), daemon=True).start()


def pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy bytes from ``source`` to ``sink`` until either side goes."""
    while data := receive(source):
        if not send(sink, data):
            break
    reset(sink)


def reset(sock: socket.socket) -> None:
    """Close with a reset, so the peer sees the connection die at once."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    close_quietly(sock)
