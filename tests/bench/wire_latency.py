#!/usr/bin/env python3
"""Server-side ack latency, read off the wire.

The load generator's latency figures include its own time: its tasks, its wake-ups, and
the CPU it shares with the server. This reads a capture of the server's port on loopback
and times each `message:send` from the moment its frame reached the server's socket to the
moment the server's ack frame left it, pairing them by connection and ack id. What is left
is the server's own share of the latency, for either server (both speak the same protocol).

Capture while a fixed-load chat run is going, e.g.

    timeout 5 tcpdump -i lo -s 400 -w /tmp/chat.pcap tcp port 3102 &
    target/release/heartline-load --addr 127.0.0.1:3102 ... chat --rate 500

then `tests/bench/wire_latency.py /tmp/chat.pcap 3102`. Frames are found at the start of
TCP segments (a `message:send` and its ack are small enough to travel whole); client frames
are unmasked. Prints the count and p50/p90/p99/p999/max in milliseconds.
"""

import re
import struct
import sys

ACK_ID = re.compile(rb"^4[23]/chat,(\d+)")


def frames(payload):
    """The WebSocket frames in a TCP payload: (header and up to 24 unmasked bytes)."""
    i = 0
    while i + 2 <= len(payload):
        second = payload[i + 1]
        length, header = second & 0x7F, 2
        if length == 126:
            if i + 4 > len(payload):
                return
            length, header = struct.unpack(">H", payload[i + 2 : i + 4])[0], 4
        elif length == 127:
            return
        key = None
        if second & 0x80:
            key, header = payload[i + header : i + header + 4], header + 4
        body = payload[i + header : i + header + min(length, 24)]
        if key:
            body = bytes(b ^ key[j % 4] for j, b in enumerate(body))
        yield body
        i += header + length


def packets(path):
    """(time, src, sport, dst, dport, payload) for each TCP/IPv4 packet with data."""
    with open(path, "rb") as f:
        head = f.read(24)
        magic = struct.unpack("<I", head[:4])[0]
        if magic not in (0xA1B2C3D4, 0xA1B23C4D):
            sys.exit(f"{path}: not a little-endian pcap file")
        scale = 1e9 if magic == 0xA1B23C4D else 1e6
        link = struct.unpack("<I", head[20:24])[0]
        offset = {1: 14, 113: 16}.get(link, 4)
        while True:
            rec = f.read(16)
            if len(rec) < 16:
                return
            sec, frac, caplen, _ = struct.unpack("<IIII", rec)
            data = f.read(caplen)
            ip = data[offset:]
            if len(ip) < 20 or ip[0] >> 4 != 4 or ip[9] != 6:
                continue
            ihl = (ip[0] & 15) * 4
            total = struct.unpack(">H", ip[2:4])[0]
            tcp = ip[ihl:]
            sport, dport = struct.unpack(">HH", tcp[:4])
            payload = tcp[(tcp[12] >> 4) * 4 : total - ihl]
            if payload:
                yield sec + frac / scale, ip[12:16], sport, ip[16:20], dport, payload


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: wire_latency.py CAPTURE.pcap SERVER_PORT")
    port = int(sys.argv[2])
    sent, lat = {}, []
    for t, src, sport, dst, dport, payload in packets(sys.argv[1]):
        for body in frames(payload):
            m = ACK_ID.match(body)
            if not m:
                continue
            if dport == port and body[:2] == b"42":
                sent[(src, sport, m.group(1))] = t
            elif sport == port and body[:2] == b"43":
                start = sent.pop((dst, dport, m.group(1)), None)
                if start is not None:
                    lat.append((t - start) * 1000)
    if not lat:
        sys.exit("no message:send / ack pairs found")
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
    print(
        f"acks {len(lat)}  p50 {q(0.5):.3f}  p90 {q(0.9):.3f}  p99 {q(0.99):.3f}  "
        f"p999 {q(0.999):.3f}  max {lat[-1]:.3f} ms"
    )


if __name__ == "__main__":
    main()
