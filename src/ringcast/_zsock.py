"""The pyzmq calls on ringcast's hot paths, shared by the broker and both
clients: the backend's own send and getsockopt (pyzmq's wrappers around them
-- keyword handling, an enum built for every EVENTS answer -- cost more than
the calls), and option numbers as plain ints (pyzmq's enum arithmetic costs
more than the calls it flags)."""

from typing import Callable, cast

import zmq

EVENTS, POLLIN, NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)
RCVMORE, SNDMORE, RCVTIMEO = int(zmq.RCVMORE), int(zmq.SNDMORE), int(zmq.RCVTIMEO)

zsend = zmq.backend.Socket.send
zget = cast(Callable[[zmq.Socket, int], int], zmq.backend.Socket.get)
