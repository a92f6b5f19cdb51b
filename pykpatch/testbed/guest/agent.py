#!/usr/bin/python3
"""pykpatch guest agent: runs the host's commands over a virtio-serial port.

Runs inside the test guest (stdlib only, Python 3.9+).  One JSON object per
line in each direction:

    host -> guest  {"id": N, "cmd": "...", "timeout": S}
                   {"id": N, "put": "/path", "data": "<base64>", "mode": 420}
    guest -> host  {"id": N, "rc": R, "out": "<base64 of stdout+stderr>"}
                   {"ready": true, "boot_id": "..."}      (once, at start)

A command that outlives its timeout is killed with its process group and
answered with rc 124, like timeout(1).
"""

import base64
import glob
import json
import os
import signal
import subprocess
import sys
import time

PORT_NAME = "org.pykpatch.agent"


def find_port() -> str:
    """The character device of our virtio-serial port, waiting for udev or the driver."""
    for _ in range(600):
        link = "/dev/virtio-ports/" + PORT_NAME
        if os.path.exists(link):
            return link
        for name_file in glob.glob("/sys/class/virtio-ports/*/name"):
            with open(name_file) as f:
                if f.read().strip() == PORT_NAME:
                    dev = "/dev/" + name_file.split("/")[-2]
                    if os.path.exists(dev):
                        return dev
        time.sleep(0.1)
    sys.exit("pykpatch-agent: virtio port %s never appeared" % PORT_NAME)


def run_command(cmd: str, timeout: float) -> "tuple[int, bytes]":
    proc = subprocess.Popen(["/bin/sh", "-c", cmd], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return 124, out + b"\n[pykpatch-agent: killed after %ss]\n" % str(timeout).encode()


def put_file(path: str, data: str, mode: int) -> "tuple[int, bytes]":
    try:
        os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        os.chmod(path, mode)
        return 0, b""
    except OSError as e:
        return 1, str(e).encode()


def handle(request: dict) -> dict:
    if "put" in request:
        rc, out = put_file(request["put"], request["data"], request.get("mode", 0o644))
    else:
        rc, out = run_command(request["cmd"], request.get("timeout", 60))
    return {"id": request["id"], "rc": rc, "out": base64.b64encode(out).decode()}


def main() -> None:
    port = find_port()
    fd = os.open(port, os.O_RDWR)
    reader = os.fdopen(fd, "rb", buffering=0)
    writer = os.fdopen(os.dup(fd), "wb", buffering=0)

    def send(obj: dict) -> None:
        # A write to a virtio port may take only part of a large reply.
        data = memoryview(json.dumps(obj).encode() + b"\n")
        while data:
            data = data[writer.write(data):]

    with open("/proc/sys/kernel/random/boot_id") as f:
        send({"ready": True, "boot_id": f.read().strip()})
    buf = b""
    while True:
        chunk = reader.read(65536)
        if not chunk:
            time.sleep(0.05)  # host not connected yet: the port reads EOF
            continue
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                send(handle(json.loads(line)))


if __name__ == "__main__":
    main()
