"""The short Markdown note written beside an OpenMM trajectory (the JSON report holds every number)."""

from __future__ import annotations

import os
from pathlib import Path

from ..atomic import write_text_atomic


def report_markdown(report) -> str:
    """The note of ``report`` (an ``openmm_md.OpenMMReport``)."""
    spec, seconds = report.spec, report.seconds
    box = " × ".join(f"{v:.2f}" for v in report.box_angstrom)
    out, top = Path(report.output).name, Path(report.topology).name
    rows = [
        ("system", f"{spec['system']}: {report.n_atoms} atoms, {report.n_waters} TIP3P waters"),
        ("force field", f"{' + '.join(report.force_field)}; PME, {spec['cutoff_nm']} nm cutoff; rigid water; "
                        f"constraints {report.constraints}"),
        ("box (production)", f"{box} Å, orthorhombic ({report.waters_per_nm3:.2f} waters/nm³)"),
        ("integrator", f"LangevinMiddleIntegrator {spec['temperature_K']:g} K, {spec['friction_per_ps']:g}/ps, "
                       f"{spec['timestep_fs']:g} fs"),
        ("seed", f"{spec['seed']} (integrator and velocities seed {spec['seed'] + 1})"),
        ("minimisation", f"{report.minimization['potential_before_kJ_per_mol']:.0f} → "
                         f"{report.minimization['potential_after_kJ_per_mol']:.0f} kJ/mol, "
                         f"{seconds['minimization']:.1f} s"),
        ("equilibration", f"{spec['equilibration_ps']:g} ps {spec['equilibration_ensemble']}, "
                          f"{seconds['equilibration']:.1f} s"),
        ("production", f"{spec['production_ps']:g} ps NVT, {report.n_frames} frames every "
                       f"{spec['frame_interval_fs']:g} fs ({report.production_steps} steps), "
                       f"{seconds['production']:.1f} s"),
        ("speed", f"{report.ms_per_step:.2f} ms/step, {report.ns_per_day:.2f} ns/day "
                  f"({report.engine['platform']} platform, {spec['threads']} thread(s))"),
        ("temperature", f"{report.temperature_K['mean']:.1f} ± {report.temperature_K['std']:.1f} K "
                        f"(at the end of each of {report.temperature_K['samples']} chunks)"),
        ("versions", ", ".join(f"{k} {v}" for k, v in report.versions.items())),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return (f"# {out} — OpenMM molecular dynamics ({spec['system']})\n\n"
            f"Made by `tools/gen_openmm_md.py`:\n\n```\n{report.command}\n```\n\n"
            f"| setting | value |\n|---|---|\n{table}\n\n"
            f"Files: `{out}` (DCD, {report.dcd_bytes / 1e6:.1f} MB, positions in Å with the unit cell of every "
            f"frame, molecules wrapped into the box as OpenMM writes them) and `{top}` (PDB: elements, CRYST1 and "
            f"CONECT records for every bond). `{Path(report.output).name}.json` holds every setting and number.\n")


def write_report_md(path: str | os.PathLike, report) -> Path:
    return write_text_atomic(path, report_markdown(report))
