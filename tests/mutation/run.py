#!/usr/bin/env python3
"""tests/mutation/run.py: the mutation suite. Each file in tests/mutation/mutations/ is one
deliberate fault in a core property (a gradient, a log-det, an inverse, a fast kernel, the
dispatch to it, a loader's bounds check, checkpoint atomicity, resume state, the optimizer):

    # what the fault is
    file: path/in/the/tree.c
    tests: ctest_name another_ctest_name
    @@ original
    exact text that occurs exactly once in the file
    @@ replacement
    the text that replaces it

The runner copies the source tree to a scratch folder (once), configures one build there and
builds it, checks that every named test passes on the unchanged code, then for each mutation:
writes the mutated file, rebuilds only the targets its tests run, runs its tests, puts the
original back. It prints each mutation with the tests that caught it (failed), and exits 1 when
a mutation survives (every test passed), does not apply (its original text is not in the file
exactly once) or does not build.

usage: python3 tests/mutation/run.py [--scratch DIR] [--jobs N] [--only TEXT] [--list]
  --scratch DIR  the scratch copy and build (default: $TMPDIR/cincflow-mutation); reused, so a
                 second run rebuilds only what changed
  --only TEXT    run the mutations whose file name contains TEXT
  --list         print the mutations and exit
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MUTATIONS = os.path.join(HERE, "mutations")


def parse(path):
    text = open(path).read()
    head, sep, rest = text.partition("@@ original\n")
    orig, sep2, repl = rest.partition("\n@@ replacement\n")
    if not sep or not sep2:
        raise ValueError(f"{path}: needs '@@ original' and '@@ replacement' sections")
    fields = {"what": ""}
    for line in head.splitlines():
        if line.startswith("#"):
            fields["what"] = line[1:].strip()
        elif ":" in line:
            k, v = line.split(":", 1)
            fields[k.strip()] = v.strip()
    if "file" not in fields or "tests" not in fields:
        raise ValueError(f"{path}: needs 'file:' and 'tests:' lines")
    return {"name": os.path.basename(path)[:-4], "what": fields["what"], "file": fields["file"],
            "tests": fields["tests"].split(), "original": orig,
            "replacement": repl[:-1] if repl.endswith("\n") else repl}


def targets_of(tests):
    """The build targets the named tests run."""
    out = set()
    for t in tests:
        if t.startswith("test_"):
            out.add(t)
        elif t == "io_h5py_check":
            out.add("test_io_checkpoint")
        elif t == "dataset_fashion_mnist":
            out.add("test_io_data")
        elif t == "two_moons_density":
            out.add("two_moons")
        elif t == "examples_run":
            out.update(("custom_op", "custom_flow"))
        else:  # the tests of the command-line tool
            out.add("cincflow_cli")
    return sorted(out)


def sh(cmd, cwd=None, log=None):
    p = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if log:
        with open(log, "w") as f:
            f.write(p.stdout)
    return p.returncode, p.stdout


def run_tests(build, tests, jobs):
    """Runs the named tests; returns the names of those that failed (or timed out)."""
    regex = "^(" + "|".join(re.escape(t) for t in tests) + ")$"
    rc, out = sh(["ctest", "-R", regex, "--no-tests=error", "-j", str(jobs)], cwd=build)
    # ctest closes with "The following tests FAILED:" and one "  N - name (Why)" line each
    # (Failed, Timeout, SEGFAULT, ...); skipped tests are listed apart and are not failures.
    block = out.split("The following tests FAILED:", 1)[1] if "tests FAILED:" in out else ""
    failed = [f for f in re.findall(r"^\s*\d+ - (\S+) \(", block, re.M) if f in tests]
    ran = re.findall(r"Test\s+#\d+: (\S+) \.", out)
    missing = [t for t in tests if t not in ran]
    return failed, missing, rc, out


def main():
    ap = argparse.ArgumentParser(description="the mutation suite")
    ap.add_argument("--scratch", default=os.path.join(tempfile.gettempdir(),
                                                      "cincflow-mutation"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--only", default="")
    ap.add_argument("--list", action="store_true")
    a = ap.parse_args()

    muts = [parse(os.path.join(MUTATIONS, f)) for f in sorted(os.listdir(MUTATIONS))
            if f.endswith(".txt") and a.only in f]
    if a.list:
        for m in muts:
            print(f"{m['name']:40s} {m['file']:24s} {' '.join(m['tests'])}\n    {m['what']}")
        return 0
    if not muts:
        print(f"no mutations match '{a.only}'")
        return 1

    src, build = os.path.join(a.scratch, "src"), os.path.join(a.scratch, "build")
    os.makedirs(a.scratch, exist_ok=True)
    # The scratch copy: the tree without builds and version control, refreshed each run.
    ignore = shutil.ignore_patterns(".git", "build", "build-*", "__pycache__", "*.pyc")
    if os.path.isdir(src):
        shutil.rmtree(src)
    shutil.copytree(ROOT, src, ignore=ignore, symlinks=True)

    results, bad = [], 0
    # Every mutation must apply to the tree as it is.
    applicable = []
    for m in muts:
        path = os.path.join(src, m["file"])
        text = open(path).read() if os.path.isfile(path) else None
        count = text.count(m["original"]) if text is not None else -1
        if count != 1:
            why = "no such file" if count < 0 else f"original text found {count} times"
            results.append((m, "DOES NOT APPLY", why, 0.0))
            bad += 1
        else:
            applicable.append((m, text))

    print(f"== configuring and building the unchanged tree in {build}", flush=True)
    rc, out = sh(["cmake", "-S", src, "-B", build, "-DCMAKE_BUILD_TYPE=RelWithDebInfo"])
    if rc == 0:
        rc, out = sh(["cmake", "--build", build, "-j", str(a.jobs)])
    if rc != 0:
        print(out[-4000:])
        print("the unchanged tree does not build")
        return 1
    every = sorted({t for m, _ in applicable for t in m["tests"]})
    print(f"== the unchanged tree: {len(every)} tests ({' '.join(every)})", flush=True)
    failed, missing, rc, out = run_tests(build, every, a.jobs)
    if failed or missing or rc != 0:
        print(out[-6000:])
        print(f"the unchanged tree fails {failed}, lacks {missing}: mutations cannot be judged")
        return 1

    for k, (m, text) in enumerate(applicable, 1):
        path = os.path.join(src, m["file"])
        start = time.time()
        print(f"== [{k}/{len(applicable)}] {m['name']}: {m['what']}", flush=True)
        with open(path, "w") as f:
            f.write(text.replace(m["original"], m["replacement"], 1))
        try:
            rc, out = sh(["cmake", "--build", build, "-j", str(a.jobs), "--target",
                          *targets_of(m["tests"])])
            if rc != 0:
                results.append((m, "DOES NOT BUILD", out.strip().splitlines()[-1:], 0.0))
                bad += 1
                continue
            failed, missing, rc, out = run_tests(build, m["tests"], a.jobs)
            took = time.time() - start
            if missing:
                results.append((m, "TESTS MISSING", " ".join(missing), took))
                bad += 1
            elif failed:
                results.append((m, "caught", " ".join(failed), took))
            else:
                results.append((m, "SURVIVED", "every named test passed", took))
                bad += 1
        finally:
            with open(path, "w") as f:
                f.write(text)
        print(f"   {results[-1][1]}: {results[-1][2]} ({results[-1][3]:.0f} s)", flush=True)

    # Put the scratch build back in step with the unchanged tree for the next run.
    sh(["cmake", "--build", build, "-j", str(a.jobs)])
    print("\n| mutation | file | result | caught by |")
    print("| --- | --- | --- | --- |")
    for m, result, detail, _ in results:
        print(f"| {m['name']} | {m['file']} | {result} | {detail} |")
    caught = sum(1 for r in results if r[1] == "caught")
    print(f"\n{caught} of {len(results)} mutations caught")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
