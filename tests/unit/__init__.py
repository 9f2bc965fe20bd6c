"""Tests of pure logic and of the repository: no broker, no Redis."""
