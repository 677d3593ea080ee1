import argparse
import platform

import torch

from layerwise.bench import available, run

ap = argparse.ArgumentParser(prog="python -m layerwise.bench", description="Side-by-side speed ratios.")
ap.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {available()})")
ap.add_argument("--quick", action="store_true", help="few repeats (a smoke test, not a measurement)")
a = ap.parse_args()
device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({torch.get_num_threads()} threads)"
print(f"layerwise benchmarks on {device}, torch {torch.__version__}, python {platform.python_version()}")
for name, ratios in run(a.names, quick=a.quick).items():
    print(f"[{name}]")
    for r in ratios:
        print("  " + r.line())
