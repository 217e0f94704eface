"""Milliseconds from launching grapevine to its first 200 on /readyz.

Usage: python3 bench/ready_time.py BINARY CONFIG DATA_DIR [RUNS]
Prints one figure per run. The clock starts just before the process is
spawned, so interpreter start-up is not counted; process creation is.
"""
import re
import socket
import subprocess
import sys
import time


def one_run(binary, config, data_dir):
    start = time.monotonic()
    proc = subprocess.Popen(
        [binary, "--config", config, "--listen", "127.0.0.1:0", "--data-dir", data_dir],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    port = None
    for line in proc.stdout:
        found = re.search(r'"msg":"listening".*"address":"127\.0\.0\.1:(\d+)"', line)
        if found:
            port = int(found.group(1))
            break
    if port is None:
        raise SystemExit("grapevine did not start")
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port)) as s:
                s.sendall(b"GET /readyz HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n")
                if b" 200 " in s.recv(64):
                    break
        except OSError:
            pass
    elapsed = (time.monotonic() - start) * 1000
    proc.terminate()
    proc.wait()
    return elapsed


if __name__ == "__main__":
    runs = int(sys.argv[4]) if len(sys.argv) > 4 else 5
    for _ in range(runs):
        print(f"{one_run(*sys.argv[1:4]):.1f}")
