"""Blank the CUDA device code of every GPU generation but the ones kept, in an ELF's .nv_fatbin section.

onnxruntime-gpu's CUDA provider library carries cubins for sm_75 ... sm_120 (284 MB in 1.31.1); a machine
runs only its own generation's. Zeroing the others' bytes in place (sizes, offsets and headers unchanged,
PTX untouched) lets the file compress to a fraction, for carrying to a GPU machine that has no package
index. The loader picks the cubin matching the device, so the kept generation runs byte for byte.

    python benchmarks/gpu/keep_sm.py libonnxruntime_providers_cuda.so 90   # rewrites the file
"""

from __future__ import annotations

import collections
import struct
import subprocess
import sys

FATBIN_MAGIC = 0xBA55ED50
ELF_ENTRY = 2


def fatbin_section(path: str) -> tuple[int, int]:
    out = subprocess.run(["readelf", "-S", "-W", path], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        parts = line.replace("[ ", "[").split()
        if ".nv_fatbin" in parts:
            i = parts.index(".nv_fatbin")
            return int(parts[i + 3], 16), int(parts[i + 4], 16)  # file offset, size
    raise SystemExit(f"{path}: no .nv_fatbin section")


def main(path: str, keep: set[int]) -> None:
    data = bytearray(open(path, "rb").read())
    start, size = fatbin_section(path)
    pos, end = start, start + size
    kept, blanked = collections.Counter(), collections.Counter()
    while pos < end:
        magic, _, header, fat_size = struct.unpack_from("<IHHQ", data, pos)
        if magic != FATBIN_MAGIC:
            pos += 8
            continue
        entry, container_end = pos + header, pos + header + fat_size
        while entry < container_end:
            kind, _, entry_header, padded = struct.unpack_from("<HHII", data, entry)
            sm = struct.unpack_from("<I", data, entry + 28)[0]
            if kind == ELF_ENTRY and sm not in keep:
                data[entry + entry_header: entry + entry_header + padded] = bytes(padded)
                blanked[sm] += padded
            else:
                kept[sm] += padded
            entry += entry_header + padded
        pos = container_end
    open(path, "wb").write(data)
    print("kept MB by sm:", {k: v // 10**6 for k, v in sorted(kept.items())},
          "blanked MB by sm:", {k: v // 10**6 for k, v in sorted(blanked.items())})


if __name__ == "__main__":
    main(sys.argv[1], {int(x) for x in sys.argv[2].split(",")})
