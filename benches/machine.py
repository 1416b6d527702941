"""The machine a measurement ran on, in the fields `moco bench` writes (its `machine`)."""
import datetime
import os
import platform


def cpu_model():
    """The CPU model as /proc/cpuinfo names it, else the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Hardware", "Model") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def available_threads():
    """The hardware threads this process may use."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def machine(threads=None, **extra):
    """CPU model, threads, date (UTC) and whatever the caller adds (library versions)."""
    return {
        "cpu": cpu_model(),
        "cores": threads or available_threads(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **extra,
    }
