"""The lowest layer: interfaces every other layer may use, importing none of them.

``runtime.loop`` is the event-loop interface (epoll masks, eventfd, the `Loop`
Protocol) that bdevs, transports and the control server are written against;
actors/loop.py implements it.
"""
