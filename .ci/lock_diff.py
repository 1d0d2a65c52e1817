"""Name what differs between the lock (constraints.txt) and a venv: `python lock_diff.py LOCK VENV`."""

import subprocess
import sys


def versions(lines):
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[name.lower().replace("_", "-")] = version
    return pins


lock_path, venv = sys.argv[1], sys.argv[2]
with open(lock_path) as f:
    lock = versions(f)
freeze = subprocess.run(
    [f"{venv}/bin/python", "-m", "pip", "freeze", "--exclude-editable"], capture_output=True, text=True
).stdout.splitlines()
now = versions(freeze)
changed = [f"{name} {lock[name]} -> {now[name]}" for name in sorted(now) if name in lock and lock[name] != now[name]]
added = [f"{name} {now[name]} (new)" for name in sorted(now) if name not in lock and name != "torch"]
removed = [f"{name} {lock[name]} (gone)" for name in sorted(lock) if name not in now]
diff = changed + added + removed
print("releases that differ from the lock: " + ("; ".join(diff) if diff else "none (the lock is the newest)"))
