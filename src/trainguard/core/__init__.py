"""Shared types and primitives; depends on nothing else in trainguard.

Everything here is standard library only, except :mod:`trainguard.core.keys`,
which wraps ``cryptography``.
"""
