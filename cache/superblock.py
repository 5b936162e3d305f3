"""Stale-writer recovery: clear the HDF5 superblock's file-consistency flags after a crash.

A writer that opens an HDF5 file for (SWMR) writing sets "file open for write" flags in the
version-3 superblock and clears them on a clean close. A killed writer leaves them set, and
HDF5 then refuses every later non-SWMR open ("file is already open for write ... may use
<h5clear file>"). Neither HDF5's public API nor h5py can clear them (h5clear uses a private
file-access property), so this module does what `h5clear --status --increment=0` does, with
plain file I/O on the superblock (HDF5 File Format Specification, "Superblock Format
Version 2 and 3"):

    offset  size  field
    0       8     signature  \\x89HDF\\r\\n\\x1a\\n
    8       1     superblock version (2 or 3)
    9       1     size of offsets O (8 for every file h5py writes)
    10      1     size of lengths
    11      1     file consistency flags (bit 0 write access, bit 2 SWMR write access)
    12      O     base address
    12+O    O     superblock extension address
    12+2O   O     end-of-file address (EOA: the end of the space HDF5 has allocated)
    12+3O   O     root group object header address
    12+4O   4     Jenkins lookup3 checksum of all preceding bytes

The stored EOA can lag behind the space a killed SWMR writer had already used (the
superblock is written last in each flush) or run ahead of the bytes it managed to write.
Recovery therefore sets EOA := max(EOA, file size) and extends the file to it, so that new
allocations never overlap anything a dead writer may have referenced.

The caller must hold the cache's exclusive writer lock: only then are set flags known to be
stale rather than belonging to a live writer.
"""

from __future__ import annotations

import os

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
FLAGS_OFFSET = 11  # byte offset of the file-consistency flags
FIXED_PREFIX = 12  # bytes before the first address field
_MASK = 0xFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _MASK


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    for shift_a, shift_b, shift_c in ((4, 6, 8), (16, 19, 4)):
        a = ((a - c) & _MASK) ^ _rot(c, shift_a)
        c = (c + b) & _MASK
        b = ((b - a) & _MASK) ^ _rot(a, shift_b)
        a = (a + c) & _MASK
        c = ((c - b) & _MASK) ^ _rot(b, shift_c)
        b = (b + a) & _MASK
    return a, b, c


def _final(a: int, b: int, c: int) -> int:
    c = ((c ^ b) - _rot(b, 14)) & _MASK
    a = ((a ^ c) - _rot(c, 11)) & _MASK
    b = ((b ^ a) - _rot(a, 25)) & _MASK
    c = ((c ^ b) - _rot(b, 16)) & _MASK
    a = ((a ^ c) - _rot(c, 4)) & _MASK
    b = ((b ^ a) - _rot(a, 14)) & _MASK
    return ((c ^ b) - _rot(b, 24)) & _MASK


def lookup3(data: bytes, initval: int = 0) -> int:
    """Bob Jenkins' lookup3 `hashlittle`, as HDF5's H5_checksum_lookup3 computes it."""
    length = len(data)
    a = b = c = (0xDEADBEEF + length + initval) & _MASK
    if length == 0:
        return c
    padded = data + b"\0" * (-length % 12)  # the tail bytes are added as if zero-padded
    words = [int.from_bytes(padded[i : i + 4], "little") for i in range(0, len(padded), 4)]
    for i in range(0, len(words), 3):
        a = (a + words[i]) & _MASK
        b = (b + words[i + 1]) & _MASK
        c = (c + words[i + 2]) & _MASK
        if i + 3 < len(words):  # every 12-byte block but the last is mixed
            a, b, c = _mix(a, b, c)
    return _final(a, b, c)


class SuperblockError(ValueError):
    """The file does not start with a checksummed version-2/3 HDF5 superblock."""


def _parse(head: bytes) -> tuple[int, int]:
    """Validate a superblock; return (size of offsets, body length before the checksum)."""
    if len(head) < FIXED_PREFIX or head[:8] != HDF5_SIGNATURE:
        raise SuperblockError("no HDF5 signature at the start of the file")
    version, size_offsets = head[8], head[9]
    if version not in (2, 3):
        raise SuperblockError(f"HDF5 superblock version {version} (r2 caches use version 3)")
    if size_offsets not in (2, 4, 8, 16, 32):
        raise SuperblockError(f"invalid HDF5 superblock (size of offsets {size_offsets})")
    body = FIXED_PREFIX + 4 * size_offsets
    if len(head) < body + 4:
        raise SuperblockError("truncated HDF5 superblock")
    stored = int.from_bytes(head[body : body + 4], "little")
    if stored != lookup3(head[:body]):
        raise SuperblockError("HDF5 superblock checksum mismatch")
    return size_offsets, body


def read_flags(fd: int) -> int:
    """The file-consistency flags of the superblock of the open file `fd`."""
    head = os.pread(fd, 256, 0)
    _parse(head)
    return head[FLAGS_OFFSET]


def clear_stale_flags(fd: int) -> tuple[bytes, int] | None:
    """Clear set consistency flags and raise the EOA to the file size.

    Args:
        fd: a descriptor of the HDF5 file opened for reading and writing, whose writer lock
            the caller holds.

    Returns:
        None if the flags were clear (nothing changed), else a backup (the original
        superblock bytes and file size) for `restore_superblock`.

    Raises:
        SuperblockError: the file has no valid version-2/3 superblock at offset 0.
    """
    original = os.pread(fd, 256, 0)
    size_offsets, body = _parse(original)
    if original[FLAGS_OFFSET] == 0:
        return None
    head = bytearray(original[: body + 4])
    eoa_at = FIXED_PREFIX + 2 * size_offsets
    eoa = int.from_bytes(head[eoa_at : eoa_at + size_offsets], "little")
    eof = os.fstat(fd).st_size
    new_eoa = max(eoa, eof)
    if eof < new_eoa:
        os.ftruncate(fd, new_eoa)  # zero-fill space the dead writer allocated but never wrote
    head[FLAGS_OFFSET] = 0
    head[eoa_at : eoa_at + size_offsets] = new_eoa.to_bytes(size_offsets, "little")
    head[body : body + 4] = lookup3(bytes(head[:body])).to_bytes(4, "little")
    os.pwrite(fd, bytes(head), 0)
    return original[: body + 4], eof


def restore_superblock(fd: int, backup: tuple[bytes, int]) -> None:
    """Undo `clear_stale_flags`: the file is byte-for-byte as before."""
    head, size = backup
    os.pwrite(fd, head, 0)
    os.ftruncate(fd, size)
