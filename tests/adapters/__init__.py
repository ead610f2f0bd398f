"""Adapter contract suite: every adapter kind against real loopback back-ends."""
