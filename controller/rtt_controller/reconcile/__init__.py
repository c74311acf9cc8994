"""Reconciling the live fabric with a plan: the 2PC coordinator (and, next, the GitOps loop).

An I/O layer: it talks to node daemons and keeps its own WAL. The pure core never imports it.
"""
