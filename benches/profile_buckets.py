"""Reads `perf report --sort dso,sym --stdio -g none` on stdin; prints the share of samples
and CPU seconds per GB (argv[1]: the measured total) of each category of work."""
import re
import sys

BUCKETS = [
    ("hashing (SHA-256)", r"sha2::|sha256"),
    ("sealing (ring AEAD)", r"ring::|aes|chacha|gcm|poly1305"),
    ("redb (B-tree, pages, checksums)", r"redb::"),
    ("HTTP (tiny_http, parsing)", r"tiny_http::"),
    ("copies in user space (memmove/memcpy)", r"memmove|memcpy"),
    ("zeroing (memset)", r"memset"),
    ("allocator (malloc/free)", r"malloc|_int_free|_int_realloc|cfree|free$|consolidate"),
    ("kernel: copies to/from user space",
     r"copy_to_iter|copy_from_iter|copy_folio|copy_page_to_iter|copy_user|rep_movs"),
    ("kernel: TCP/IP and loopback",
     r"tcp_|ip_|skb|net_rx|napi|softirq|netif|loopback|sock_|dev_|__sys_send|__sys_recv"
     r"|raw_spin_unlock_irqrestore"),
    ("kernel: filesystem, page cache, block I/O",
     r"ext4|filemap|folio|bio_|blk_|mpage|jbd2|dquot|page_cache|writeback|__es_|es_"),
]


def main():
    total = float(sys.argv[1])
    shares = {name: 0.0 for name, _ in BUCKETS}
    other_user = other_kernel = 0.0
    for line in sys.stdin:
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)", line)
        if not m:
            continue
        pct, dso, kind, sym = float(m[1]), m[2], m[3], m[4]
        for name, pat in BUCKETS:
            if re.search(pat, sym):
                shares[name] += pct
                break
        else:
            if kind == "k":
                other_kernel += pct
            else:
                other_user += pct
    shares["other user space (Outpost, libc)"] = other_user
    shares["other kernel (syscalls, scheduling, futex)"] = other_kernel
    for name, pct in sorted(shares.items(), key=lambda kv: -kv[1]):
        if pct >= 0.5:
            print(f"  {name:45} {pct:5.1f} %  {total * pct / 100:5.2f} s/GB")


main()
