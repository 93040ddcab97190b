"""One harness per backend, for the conformance suite: how to get fresh backends on one real server.

Each module here defines ``NAME`` and ``async def open_harness(request) -> AsyncIterator[Harness]`` (an
async context manager factory). ``tests/conformance/conftest.py`` runs every conformance test once per
module found here.
"""
