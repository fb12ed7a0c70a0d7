#!/usr/bin/env python3
"""Writes streamer/web/blake2b-wasm.js: a tiny hand-assembled WebAssembly BLAKE2b compressor.

WebAssembly has native 64-bit adds and rotations, so it compresses several times faster than the
JavaScript fallback, which must emulate them on 32-bit halves. The module is small (well under
the 4 KiB that Chromium compiles synchronously on the main thread) and exports its memory and
`blocks(ptr, n, tlo, thi, inc, last)`: compress the n 128-byte blocks at ptr into the state at
address 0, adding inc to the byte counter t (tlo, thi) before each; `last` marks the final block.
Memory: 0..63 state h, 64..255 message schedule (x8), 256.. input. Run after changing this file;
the output is committed.
"""

from __future__ import annotations

import base64
from pathlib import Path

IV = [
    0x6A09E667F3BCC908, 0xBB67AE8584CAA73B, 0x3C6EF372FE94F82B, 0xA54FF53A5F1D36F1,
    0x510E527FADE682D1, 0x9B05688C2B3E6C1F, 0x1F83D9ABFB41BD6B, 0x5BE0CD19137E2179,
]  # fmt: skip
SIGMA = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
    [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
    [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
    [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
    [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
    [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
    [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
    [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
    [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
]
MIXES = [(0, 4, 8, 12), (1, 5, 9, 13), (2, 6, 10, 14), (3, 7, 11, 15),
         (0, 5, 10, 15), (1, 6, 11, 12), (2, 7, 8, 13), (3, 4, 9, 14)]  # fmt: skip
SIGMA_AT = 64
INPUT_AT = 256

# opcodes
LOCAL_GET, LOCAL_SET, LOCAL_TEE = 0x20, 0x21, 0x22
I32_CONST, I64_CONST = 0x41, 0x42
I32_LOAD8_U, I64_LOAD, I64_STORE = 0x2D, 0x29, 0x37
I32_EQZ, I32_LT_U, I32_ADD, I32_SUB = 0x45, 0x49, 0x6A, 0x6B
I64_ADD, I64_OR, I64_XOR, I64_SHL, I64_ROTR, I64_EXTEND_I32_U = 0x7C, 0x84, 0x85, 0x86, 0x8A, 0xAD
BLOCK, LOOP, IF, END, BR, BR_IF, VOID = 0x02, 0x03, 0x04, 0x0B, 0x0C, 0x0D, 0x40
I32, I64 = 0x7F, 0x7E

# locals: params ptr, n, tlo, thi, inc, last (i32); then t (i64), v0..v15 (i64), s (i32)
PTR, N, TLO, THI, INC, LAST = range(6)
T = 6
V = 7
S = 23


def uleb(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def sleb(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        done = (n == 0 and not b & 0x40) or (n == -1 and b & 0x40)
        out.append(b | (0 if done else 0x80))
        if done:
            return bytes(out)


def i64_const(n: int) -> bytes:
    return bytes([I64_CONST]) + sleb(n - (1 << 64) if n >= 1 << 63 else n)


def get(i: int) -> bytes:
    return bytes([LOCAL_GET]) + uleb(i)


def put(i: int) -> bytes:
    return bytes([LOCAL_SET]) + uleb(i)


def mem(op: int, align: int, offset: int) -> bytes:
    return bytes([op]) + uleb(align) + uleb(offset)


def message(k: int) -> bytes:
    """Push m[sigma[r][k]]: the schedule byte at s + k (pre-multiplied by 8) plus ptr."""
    return get(PTR) + get(S) + mem(I32_LOAD8_U, 0, k) + bytes([I32_ADD]) + mem(I64_LOAD, 3, 0)


def mix(a: int, b: int, c: int, d: int, x: int, y: int) -> bytes:
    va, vb, vc, vd = (V + i for i in (a, b, c, d))

    def add3(extra: bytes) -> bytes:  # a = a + b + extra
        return get(va) + get(vb) + bytes([I64_ADD]) + extra + bytes([I64_ADD]) + put(va)

    def xor_rot(dst: int, src: int, n: int) -> bytes:  # dst = rotr(dst ^ src, n)
        return get(dst) + get(src) + bytes([I64_XOR]) + i64_const(n) + bytes([I64_ROTR]) + put(dst)

    def add2(dst: int, src: int) -> bytes:
        return get(dst) + get(src) + bytes([I64_ADD]) + put(dst)

    return (
        add3(message(x))
        + xor_rot(vd, va, 32)
        + add2(vc, vd)
        + xor_rot(vb, vc, 24)
        + add3(message(y))
        + xor_rot(vd, va, 16)
        + add2(vc, vd)
        + xor_rot(vb, vc, 63)
    )


def body() -> bytes:
    code = bytearray()
    # t = tlo | thi << 32
    code += get(TLO) + bytes([I64_EXTEND_I32_U]) + get(THI) + bytes([I64_EXTEND_I32_U])
    code += i64_const(32) + bytes([I64_SHL, I64_OR]) + put(T)
    code += bytes([BLOCK, VOID, LOOP, VOID])
    code += get(N) + bytes([I32_EQZ, BR_IF]) + uleb(1)  # while n
    # t += inc
    code += get(T) + get(INC) + bytes([I64_EXTEND_I32_U, I64_ADD]) + put(T)
    for i in range(8):
        code += bytes([I32_CONST, 0]) + mem(I64_LOAD, 3, 8 * i) + put(V + i)
        code += i64_const(IV[i]) + put(V + 8 + i)
    code += get(V + 12) + get(T) + bytes([I64_XOR]) + put(V + 12)
    code += get(LAST) + bytes([IF, VOID]) + get(V + 14) + i64_const(-1 & (2**64 - 1))
    code += bytes([I64_XOR]) + put(V + 14) + bytes([END])
    code += bytes([I32_CONST]) + sleb(SIGMA_AT) + put(S)
    code += bytes([LOOP, VOID])
    for k, (a, b, c, d) in enumerate(MIXES):
        code += mix(a, b, c, d, 2 * k, 2 * k + 1)
    code += get(S) + bytes([I32_CONST]) + sleb(16) + bytes([I32_ADD]) + bytes([LOCAL_TEE]) + uleb(S)
    code += bytes([I32_CONST]) + sleb(SIGMA_AT + 12 * 16) + bytes([I32_LT_U, BR_IF]) + uleb(0)
    code += bytes([END])
    for i in range(8):  # h[i] ^= v[i] ^ v[i + 8]
        code += bytes([I32_CONST, 0])
        code += bytes([I32_CONST, 0]) + mem(I64_LOAD, 3, 8 * i)
        code += get(V + i) + bytes([I64_XOR]) + get(V + 8 + i) + bytes([I64_XOR])
        code += mem(I64_STORE, 3, 8 * i)
    code += get(PTR) + bytes([I32_CONST]) + sleb(128) + bytes([I32_ADD]) + put(PTR)
    code += get(N) + bytes([I32_CONST, 1, I32_SUB]) + put(N)
    code += bytes([BR, 0, END, END])
    locals_ = uleb(2) + uleb(17) + bytes([I64]) + uleb(1) + bytes([I32])
    func = locals_ + bytes(code) + bytes([END])
    return uleb(len(func)) + func


def section(sid: int, payload: bytes) -> bytes:
    return bytes([sid]) + uleb(len(payload)) + payload


def name(s: str) -> bytes:
    return uleb(len(s)) + s.encode()


def module() -> bytes:
    types = uleb(1) + bytes([0x60]) + uleb(6) + bytes([I32] * 6) + uleb(0)
    funcs = uleb(1) + uleb(0)
    memory = uleb(1) + bytes([0x00]) + uleb(1)
    exports = uleb(2) + name("memory") + bytes([0x02]) + uleb(0) + name("blocks") + bytes([0x00]) + uleb(0)
    code = uleb(1) + body()
    sigma = bytes(8 * SIGMA[r % 10][i] for r in range(12) for i in range(16))
    data = uleb(1) + bytes([0x00, I32_CONST]) + sleb(SIGMA_AT) + bytes([END]) + uleb(len(sigma)) + sigma
    return (
        b"\x00asm"
        + (1).to_bytes(4, "little")
        + section(1, types)
        + section(3, funcs)
        + section(5, memory)
        + section(7, exports)
        + section(10, code)
        + section(11, data)
    )


TEMPLATE = """\
// Generated by scripts/gen_blake2b_wasm.py: do not edit. A hand-assembled WebAssembly BLAKE2b
// compressor ({size} bytes) for blake2b.js. One job: compress 128-byte blocks with native 64-bit
// arithmetic. Exports `memory` (0..63 state h, 64..255 message schedule, 256.. input) and
// `blocks(ptr, n, tlo, thi, inc, last)`: compress n blocks at ptr, adding inc to the byte counter
// (tlo, thi) before each; `last` flags the final block.

export const WASM_BASE64 =
  '{b64}'

export const INPUT_AT = {input_at}

/** {{memory, blocks}} of a new instance, or null where WebAssembly is unavailable. */
export function instantiate () {{
  if (typeof WebAssembly !== 'object') return null
  try {{
    const bytes = Uint8Array.from(atob(WASM_BASE64), (c) => c.charCodeAt(0))
    const instance = new WebAssembly.Instance(new WebAssembly.Module(bytes), {{}})
    return instance.exports
  }} catch {{
    return null // e.g. a content security policy without 'wasm-unsafe-eval'
  }}
}}
"""


def main() -> None:
    wasm = module()
    b64 = base64.b64encode(wasm).decode()
    lines = "' +\n  '".join(b64[i : i + 96] for i in range(0, len(b64), 96))
    path = Path(__file__).resolve().parent.parent / "streamer" / "web" / "blake2b-wasm.js"
    path.write_text(TEMPLATE.format(size=len(wasm), b64=lines, input_at=INPUT_AT))


if __name__ == "__main__":
    main()
