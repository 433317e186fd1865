"""The reactor's cost per ready socket, with and without a log context
per event (`lumora_reload.leanpoll`), in one process on a private epoll
reactor: N loopback connections each get one small message (what an ack
is to the daemon), then the reactor is turned until every one was read.
Rounds alternate the two loops, so a box that slows down slows both.

    python benchmarks/bench_reactor.py [--connections 200] [--rounds 200]

Prints µs per event (median of rounds) for Twisted's loop and the lean one.
The time covers epoll, the recv, Twisted's doRead and a protocol that
counts; the sends that make the sockets ready are not timed.
"""

import argparse
import socket
import statistics
import time

from twisted.internet import protocol
from twisted.internet.epollreactor import EPollReactor

from lumora_reload import leanpoll

MESSAGE = b"\x81\x80" + b"\0" * 4  # an empty masked text frame: size is not the point


class Counter(protocol.Protocol):
    def connectionMade(self):
        self.factory.connected += 1

    def dataReceived(self, data):
        self.factory.read += 1


class Counting(protocol.Factory):
    protocol = Counter

    def __init__(self):
        self.connected = 0
        self.read = 0


def _round(reactor, factory, clients):
    factory.read = 0
    for client in clients:
        client.send(MESSAGE)
    start = time.perf_counter()
    while factory.read < len(clients):
        reactor.iterate(0)
    return (time.perf_counter() - start) / len(clients) * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    reactor = EPollReactor()
    factory = Counting()
    port = reactor.listenTCP(0, factory, backlog=args.connections + 16, interface="127.0.0.1")
    clients = [socket.create_connection(("127.0.0.1", port.getHost().port)) for _ in range(args.connections)]
    while factory.connected < args.connections:
        reactor.iterate(0.01)
    if not leanpoll.install(reactor):
        raise SystemExit("this Twisted's epoll loop is not the one leanpoll copies")
    loops = {"lean": leanpoll.install, "twisted": leanpoll.uninstall}
    timings = {"twisted": [], "lean": []}
    for i in range(args.rounds):
        for name in (("twisted", "lean") if i % 2 else ("lean", "twisted")):
            loops[name](reactor)
            timings[name].append(_round(reactor, factory, clients))
    twisted, lean = statistics.median(timings["twisted"]), statistics.median(timings["lean"])
    print(f"{args.connections} connections, {args.rounds} rounds each, one message per connection per round")
    print("| loop | µs per event (median) |")
    print("|---|---|")
    print(f"| Twisted's (log context per event) | {twisted:.2f} |")
    print(f"| lean (leanpoll) | {lean:.2f} |")
    print(f"saved: {twisted - lean:.2f} µs per event ({(twisted - lean) / twisted:.0%})")
    for client in clients:
        client.close()
    port.stopListening()


if __name__ == "__main__":
    main()
