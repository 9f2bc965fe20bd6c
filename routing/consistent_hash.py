"""Which bucket RabbitMQ's consistent-hash exchange (``x-consistent-hash``) picks for a message.

The same computation as the plugin (rabbitmq_consistent_hash_exchange, 3.8 onwards; read from the 3.10
plugin's ``route/2``, ``value_to_hash/2`` and ``jump_consistent_hash/2``):

1. the value hashed is the first routing key (a binary) or, with the exchange argument ``hash-header``, the
   header's AMQP table entry ``{Type, Value}`` (a string header is ``{longstr, <<"BTCUSDT">>}``), or the atom
   ``undefined`` when the message has no such header;
2. ``erlang:phash2/1`` of that term (Bob Jenkins' hash over the term, OTP's ``make_hash2``, 27 bits);
3. jump consistent hash (Lamping and Veach) over the bucket count, its random numbers drawn from
   ``rand:seed_s(exs1024, {K, K, K})`` and ``rand:uniform_s/1``.

Bucket ``i`` is the ``i``-th bucket handed out as bindings were added: a binding of weight ``w`` adds ``w``
buckets. tradebus binds each shard with weight 1, shard 0 first, so bucket ``i`` is shard ``i``.
``phash2`` is portable across ERTS versions and machines (its documented contract); the live test checks
this module against the broker itself (tests/live/test_shards_live.py).
"""

from __future__ import annotations

from functools import lru_cache

#: A string header is an AMQP ``longstr``: the plugin hashes ``{longstr, Value}``.
LONGSTR = "longstr"
#: What a message without the header hashes as (the atom).
UNDEFINED = "undefined"

_M32 = 0xFFFFFFFF
_M64 = 0xFFFFFFFFFFFFFFFF
_M21 = (1 << 21) - 1
_M33 = (1 << 33) - 1
_M39 = (1 << 39) - 1
_PHASH2_RANGE = 1 << 27
# OTP's make_hash2 constants: the golden ratio times 3, 9 and 13, mod 2^32.
_HCONST = 0x9E3779B9
_HCONST_3 = 0xDAA66D2B
_HCONST_9 = 0x8FF34781
_HCONST_13 = 0x08D12E65


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    """Bob Jenkins' 96-bit mix, on unsigned 32-bit words."""
    a = (a - b - c) & _M32 ^ (c >> 13)
    b = (b - c - a) & _M32 ^ (a << 8) & _M32
    c = (c - a - b) & _M32 ^ (b >> 13)
    a = (a - b - c) & _M32 ^ (c >> 12)
    b = (b - c - a) & _M32 ^ (a << 16) & _M32
    c = (c - a - b) & _M32 ^ (b >> 5)
    a = (a - b - c) & _M32 ^ (c >> 3)
    b = (b - c - a) & _M32 ^ (a << 10) & _M32
    c = (c - a - b) & _M32 ^ (b >> 15)
    return a, b, c


def _block_hash(data: bytes, initval: int) -> int:
    """OTP's ``block_hash``: Bob Jenkins' lookup2 over ``data``, seeded with ``initval``."""
    a = b = _HCONST
    c = initval
    k, length = data, len(data)
    while len(k) >= 12:
        a = (a + int.from_bytes(k[0:4], "little")) & _M32
        b = (b + int.from_bytes(k[4:8], "little")) & _M32
        c = (c + int.from_bytes(k[8:12], "little")) & _M32
        a, b, c = _mix(a, b, c)
        k = k[12:]
    c = (c + length) & _M32
    rest = len(k)
    # The tail: bytes 0-3 into a, 4-7 into b, 8-10 into c's upper three bytes (its low byte is the length).
    a = (a + int.from_bytes(k[0:4], "little")) & _M32
    if rest > 4:
        b = (b + int.from_bytes(k[4:8], "little")) & _M32
    if rest > 8:
        c = (c + (int.from_bytes(k[8:11], "little") << 8)) & _M32
    return _mix(a, b, c)[2]


def _uint32_hash(value: int, const: int, hash_: int) -> int:
    """OTP's ``UINT32_HASH(value, const)`` applied to ``hash_``."""
    return _mix((const + value) & _M32, const, hash_)[2]


def atom_hash(name: str) -> int:
    """The hash value of an atom (OTP's ``atom_hash``: hashpjw over its Latin-1 name)."""
    h = 0
    for v in name.encode("latin-1"):
        h = ((h << 4) + v) & _M32
        g = h & 0xF0000000
        if g:
            h ^= g >> 24
            h ^= g
    return h


def _hash_binary(data: bytes, hash_: int) -> int:
    con = (_HCONST_13 + hash_) & _M32
    return con if not data else _block_hash(data, con)


def phash2_binary(data: bytes) -> int:
    """``erlang:phash2(Binary)``."""
    return _hash_binary(data, 0) & (_PHASH2_RANGE - 1)


def phash2_atom(name: str) -> int:
    """``erlang:phash2(Atom)``."""
    return atom_hash(name) & (_PHASH2_RANGE - 1)


def phash2_tagged(tag: str, data: bytes) -> int:
    """``erlang:phash2({Tag, Binary})``: how the plugin sees a header (``{longstr, <<"BTCUSDT">>}``)."""
    h = _uint32_hash(2, _HCONST_9, 0)  # a 2-tuple
    h = _uint32_hash(atom_hash(tag), _HCONST_3, h)  # its first element, an atom
    return _hash_binary(data, h) & (_PHASH2_RANGE - 1)


def _exs64_next(r: int) -> tuple[int, int]:
    r ^= r >> 12
    r ^= (r & _M39) << 25
    r ^= r >> 27
    return (r * 2685821657736338717) & _M64, r


class _Exs1024:
    """OTP's ``exs1024`` generator (xorshift1024*), seeded as ``rand:seed_s(exs1024, {A1, A2, A3})``."""

    def __init__(self, a1: int, a2: int, a3: int) -> None:
        b1 = (((a1 & _M21) + 1) * 2097131) & _M21
        b2 = (((a2 & _M21) + 1) * 2097133) & _M21
        b3 = (((a3 & _M21) + 1) * 2097143) & _M21
        r = (b1 << 43) | (b2 << 22) | (b3 << 1) | 1
        generated: list[int] = []
        for _ in range(16):
            x, r = _exs64_next(r)
            generated.insert(0, x)
        # rand's state is a list consumed from the front and a reversed list of what it consumed.
        self._front: list[int] = generated
        self._back: list[int] = []

    def next(self) -> int:
        if len(self._front) == 1:
            self._front = [self._front[0], *reversed(self._back)]
            self._back = []
        s0, s1 = self._front[0], self._front[1]
        s1 ^= (s1 & _M33) << 31
        s1 ^= s1 >> 11
        s0 ^= s0 >> 30
        ns1 = s0 ^ s1
        self._back.insert(0, self._front[0])
        self._front = [ns1, *self._front[2:]]
        return (ns1 * 1181783497276652981) & _M64

    def uniform(self) -> float:
        """``rand:uniform_s/1`` for exs1024: the next value over 2^64."""
        return self.next() / (1 << 64)


def jump_consistent_hash(key: int, buckets: int) -> int:
    """The plugin's ``jump_consistent_hash(K, N)`` for an integer ``key`` (a phash2 value)."""
    if buckets < 1:
        raise ValueError("a consistent-hash exchange needs at least one bucket")
    if buckets == 1:
        return 0
    rng = _Exs1024(key, key, key)
    b, j = -1, 0
    while j < buckets:
        b = j
        j = int((b + 1) / rng.uniform())
    return b


@lru_cache(maxsize=4096)
def header_bucket(value: str | None, buckets: int) -> int:
    """The bucket of a message whose hash header is the string ``value`` (None: it has no such header)."""
    key = phash2_atom(UNDEFINED) if value is None else phash2_tagged(LONGSTR, value.encode())
    return jump_consistent_hash(key, buckets)


def routing_key_bucket(routing_key: str, buckets: int) -> int:
    """The bucket of a message hashed on its routing key (an exchange without ``hash-header``)."""
    return jump_consistent_hash(phash2_binary(routing_key.encode()), buckets)
