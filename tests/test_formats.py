"""Every MD engine's files in, through MDAnalysis: trajectories, topologies, units, the model's data signature
and forecast time stamps. Real files come from the MDAnalysisTests package (a test dependency, not vendored);
our coordinates are compared with MDAnalysis's own output for the same file."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from asteroid_hpc.errors import UserError
from tests.support.cli import run_cli


def _test_data() -> Path:
    # located without importing MDAnalysisTests (its __init__ imports pytest plugins)
    spec = importlib.util.find_spec("MDAnalysisTests")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("MDAnalysisTests is a test dependency (pip install MDAnalysisTests)")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


DATA = _test_data()

# (engine, topology, trajectory): a real file of every format read through MDAnalysis, and AMBER NetCDF
TRAJECTORIES = [
    ("gromacs-xtc", "adk_oplsaa.tpr", "adk_oplsaa.xtc"),
    ("gromacs-trr", "adk_oplsaa.tpr", "adk_oplsaa.trr"),  # velocities
    ("charmm-dcd", "adk.psf", "adk_dims.dcd"),
    ("charmm-dcd-triclinic", "tip125_tric_C36.psf", "tip125_tric_C36.dcd"),  # cell
    ("namd-dcd", "SiN_tric_namd.psf", "SiN_tric_namd.dcd"),
    ("lammps-dump", None, "lammps/wat.lammpstrj.bz2"),
    ("lammps-dump-triclinic", None, "lammps/albite_triclinic.dump"),
    ("lammps-dcd", "lammps/ifabp_apo_100mM.data.bz2", "lammps/ifabp_apo_100mM.dcd"),
    ("h5md", "cobrotoxin.tpr", "cobrotoxin.h5md"),  # velocities, cell
    ("amber-mdcrd", "Amber/ache.prmtop", "Amber/ache.mdcrd"),
    ("amber-mdcrd-box", "Amber/bala.prmtop", "Amber/bala.trj"),
    ("amber-netcdf", "Amber/bala.prmtop", "Amber/bala.ncdf"),
    ("amber-netcdf-box", "Amber/ace_tip3p.parm7", "Amber/ace_tip3p.nc"),
]


def _universe(topology: str | None, trajectory: str):
    import MDAnalysis

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if topology is None:
            return MDAnalysis.Universe(str(DATA / trajectory), format="LAMMPSDUMP")
        return MDAnalysis.Universe(str(DATA / topology), str(DATA / trajectory))


def _frames_of(universe) -> dict:
    """MDAnalysis's own frames: positions, velocities, cell, time (copied: timesteps are reused)."""
    out = {"positions": [], "velocities": [], "cell": [], "time": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for ts in universe.trajectory:
            out["positions"].append(ts.positions.copy())
            out["velocities"].append(ts.velocities.copy() if ts.has_velocities else None)
            out["cell"].append(None if ts.dimensions is None else ts.dimensions.copy())
            out["time"].append(ts.time)
    return out


@pytest.mark.parametrize("engine, topology, trajectory", TRAJECTORIES, ids=[c[0] for c in TRAJECTORIES])
def test_reader_matches_mdanalysis(engine, topology, trajectory):
    from asteroid_hpc.data.readers import TrajectoryReader

    universe = _universe(topology, trajectory)
    truth = _frames_of(universe)
    n = len(truth["positions"])
    with TrajectoryReader(DATA / trajectory, n_atoms=len(universe.atoms)) as reader:
        assert (reader.n_frames, reader.n_atoms) == (n, len(universe.atoms))
        whole = reader.read(0, n)
        assert np.array_equal(whole.coordinates, np.stack(truth["positions"]))
        if truth["cell"][0] is not None:
            assert whole.cell is not None
            assert np.allclose(whole.cell, np.stack(truth["cell"]), rtol=1e-6, atol=1e-5)
        if truth["velocities"][0] is not None and reader.format != "amber-netcdf":  # AMBER: opt-in
            assert np.array_equal(whole.velocities, np.stack(truth["velocities"]))
        if reader.has_time:
            assert np.allclose(whole.time_ps, truth["time"], rtol=1e-6)
            if n > 1:
                assert reader.timestep_ps == pytest.approx((truth["time"][-1] - truth["time"][0]) / (n - 1), rel=1e-5)
        # random access: any frame range, as MPI ranks read their own frames of one file
        if n >= 3:
            part = reader.read(n - 2, n)
            assert part.start == n - 2 and np.array_equal(part.coordinates, np.stack(truth["positions"][n - 2:]))
            strided = np.concatenate([c.coordinates for c in reader.iter_chunks(2, 0, n, 2)])
            assert np.array_equal(strided, np.stack(truth["positions"][::2]))


def test_formats_without_time_report_none():
    """LAMMPS dumps hold step numbers and AMBER ASCII files nothing: no made-up 1 ps spacing."""
    from asteroid_hpc.data.readers import TrajectoryReader

    with TrajectoryReader(DATA / "lammps/wat.lammpstrj.bz2") as reader:
        assert not reader.has_time and reader.timestep_ps is None
    with TrajectoryReader(DATA / "Amber/ache.mdcrd", n_atoms=252) as reader:
        assert not reader.has_time and reader.timestep_ps is None


def test_mdcrd_without_topology_is_one_line_error():
    from asteroid_hpc.data.readers import TrajectoryReader

    with pytest.raises(UserError, match="does not hold its atom count: pass --topology"):
        TrajectoryReader(DATA / "Amber/ache.mdcrd")
    with pytest.raises(UserError, match="adk_oplsaa.xtc: 47681 atoms, but the topology has 9"):
        TrajectoryReader(DATA / "adk_oplsaa.xtc", n_atoms=9)


def test_openmm_dcd(tmp_path):
    """A DCD written by OpenMM's own writer reads back as written."""
    from openmm import Vec3, unit
    from openmm.app import DCDFile, Element, Topology

    from asteroid_hpc.data.readers import TrajectoryReader

    top = Topology()
    chain = top.addChain()
    residue = top.addResidue("HOH", chain)
    for name, symbol in (("O", "O"), ("H1", "H"), ("H2", "H")):
        top.addAtom(name, Element.getBySymbol(symbol), residue)
    rng = np.random.default_rng(0)
    frames = rng.normal(size=(4, 3, 3)).astype(np.float32)  # nm
    with open(tmp_path / "w.dcd", "wb") as fh:
        dcd = DCDFile(fh, top, 0.002 * unit.picoseconds, interval=10)
        for x in frames:
            dcd.writeModel([Vec3(*map(float, p)) for p in x] * unit.nanometer)
    with TrajectoryReader(tmp_path / "w.dcd") as reader:
        assert reader.n_frames == 4
        assert np.allclose(reader.read(0, 4).coordinates, frames * 10, atol=1e-5)  # Å
        assert reader.timestep_ps == pytest.approx(0.02, rel=1e-4)


# ------------------------------------------------------------------------------------------- topologies

@pytest.mark.parametrize("topology, source, elements", [
    ("Amber/ace_tip3p.parm7", "file", {1, 6, 8}),  # ATOMIC_NUMBER field
    ("Amber/bala.prmtop", "masses", {1, 6, 7, 8, 11}),  # no element field: masses, logged
    ("adk_oplsaa.tpr", "file", {0, 1, 6, 7, 8, 11, 16}),  # TIP4P virtual sites: 0
    ("adk.psf", "masses", {1, 6, 7, 8, 16}),
    ("lammps/ifabp_apo_100mM.data.bz2", "masses", {1, 6, 7, 8, 11, 16, 17}),
    ("lammps/albite_triclinic.data", "masses", {13}),  # "Atoms # atomic": parsed in that style
    ("lammps/a_lot_of_bond_types.data", "masses", {1, 6, 7, 8, 9, 15, 16, 17, 35}),
    ("4x8u.pdbx", "file", {6, 7, 8}),
    ("1hvr.pdb", "file", {1, 6, 7, 8, 16}),
])
def test_topology_elements(topology, source, elements):
    from asteroid_hpc.data.topology import read_topology

    top = read_topology(DATA / topology)
    assert top.element_source == source
    assert set(np.unique(top.atomic_numbers).tolist()) == elements


def test_topology_elements_agree_with_the_file_where_it_has_them():
    """Where the file has an element field, the mass guess of the same atoms gives the same elements."""
    import MDAnalysis

    from asteroid_hpc.data.topology import _symbol_table, read_topology

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        universe = MDAnalysis.Universe(str(DATA / "Amber/ace_tip3p.parm7"))
    z_of = _symbol_table()
    assert read_topology(DATA / "Amber/ace_tip3p.parm7").atomic_numbers.tolist() == \
        [z_of[e.upper()] for e in universe.atoms.elements]


def test_bonds_kept_from_the_topology():
    import MDAnalysis

    from asteroid_hpc.data.topology import read_topology

    for name in ("adk.psf", "Amber/bala.prmtop", "adk_oplsaa.tpr"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = MDAnalysis.Universe(str(DATA / name)).atoms.bonds.indices
        assert np.array_equal(read_topology(DATA / name).bonds, expected)
    assert len(read_topology(DATA / "adk_open.pdb").bonds) == 0  # no CONECT records: none made up


def test_lammps_data_in_real_units_guesses_elements_from_masses_and_says_so(caplog):
    """A LAMMPS data file (units real: g/mol; no element column): one element per atom type from its mass,
    logged as a guess; the atom types agree with MDAnalysis's own reading of the file."""
    from asteroid_hpc.data.topology import read_topology

    top = read_topology(DATA / "lammps/ifabp_apo_100mM.data.bz2")
    assert "no element field for 12421 atoms; elements guessed from their masses" in caplog.text
    universe = _universe("lammps/ifabp_apo_100mM.data.bz2", "lammps/ifabp_apo_100mM.dcd")
    by_type = {}
    for atom_type, z in zip(universe.atoms.types, top.atomic_numbers):
        by_type.setdefault(atom_type, set()).add(int(z))
    assert all(len(zs) == 1 for zs in by_type.values())
    masses = dict(zip(universe.atoms.types, universe.atoms.masses))
    assert {round(float(masses[t])): next(iter(zs)) for t, zs in by_type.items()} == \
        {1: 1, 12: 6, 14: 7, 16: 8, 23: 11, 32: 16, 35: 17}


def test_lammps_data_in_reduced_units_is_one_line_error():
    """``units lj`` masses (all 1) are not hydrogen."""
    from asteroid_hpc.data.topology import read_topology

    with pytest.raises(UserError, match=r"chain_initial.data: cannot determine the element of atom 0 .*every mass "
                                        r"is 1, LAMMPS reduced units \(units lj\)") as info:
        read_topology(DATA / "lammps/chain_initial.data")
    assert "\n" not in str(info.value)


def test_lammps_data_with_unusable_masses_is_one_line_error():
    from asteroid_hpc.data.topology import read_topology

    with pytest.raises(UserError, match=r"datatest.data: cannot determine the element of atom 0 \(type '3' mass "
                                        r"0.012\)") as info:
        read_topology(DATA / "lammps/datatest.data")
    assert "\n" not in str(info.value)


PEPTIDE = """\
ATOM      1  N   MET A   1      27.340  24.430   2.614
ATOM      2  CA  MET A   1      26.266  25.413   2.842
ATOM      3  CG  MET A   1      24.520  25.912   4.720
ATOM      4  SD  MET A   1      24.000  27.500   5.300
ATOM      5  CD  LYS A   2      23.100  27.900   6.800
ATOM      6  NZ  LYS A   2      22.000  28.100   7.600
ATOM      7  HG  SER A   3      21.000  28.100   7.600
ATOM      8  OG  SER A   3      20.500  28.400   8.100
ATOM      9 HD11 LEU A   4      19.500  28.400   8.100
ATOM     10 NA    NA A   5      15.000  20.000   8.000
END
"""


def test_pdb_without_element_columns_gets_real_elements(tmp_path):
    """A peptide PDB with no element columns: residue atoms CD, HG, NA... are C, H, N, never Cd, Hg, Na; the
    sodium ion (residue NA) is sodium."""
    from asteroid_hpc.data.topology import read_topology

    path = tmp_path / "peptide.pdb"
    path.write_text(PEPTIDE)
    top = read_topology(path)
    assert top.element_source == "names"
    assert top.atomic_numbers.tolist() == [7, 6, 6, 16, 6, 7, 1, 8, 1, 11]


def test_pdb_atom_of_unknown_element_is_one_line_error(tmp_path):
    from asteroid_hpc.data.topology import read_topology

    path = tmp_path / "odd.pdb"
    path.write_text(PEPTIDE.replace("ATOM     10 NA    NA A   5", "HETATM   10 QQ9  LIG A   5"))
    with pytest.raises(UserError, match=r"odd.pdb: cannot determine the element of atom 9 \(name 'QQ9'"):
        read_topology(path)


# ------------------------------------------------------------------------------------------------ units

def _netcdf(path: Path, coord_units: str | None, time_units: str | None, times=(0.0, 1.0, 2.0, 3.0)) -> Path:
    import netCDF4

    with netCDF4.Dataset(path, "w", format="NETCDF3_64BIT_OFFSET") as ds:
        ds.Conventions = "AMBER"
        ds.createDimension("frame", None)
        ds.createDimension("atom", 2)
        ds.createDimension("spatial", 3)
        coords = ds.createVariable("coordinates", "f4", ("frame", "atom", "spatial"))
        if coord_units:
            coords.units = coord_units
        time = ds.createVariable("time", "f4", ("frame",))
        if time_units:
            time.units = time_units
        coords[:] = np.arange(len(times) * 6, dtype=np.float32).reshape(len(times), 2, 3)
        time[:] = np.asarray(times, dtype=np.float32)
    return path


def test_netcdf_units_from_the_file(tmp_path):
    from asteroid_hpc.data.readers import TrajectoryReader

    raw = np.arange(24, dtype=np.float32).reshape(4, 2, 3)
    with TrajectoryReader(_netcdf(tmp_path / "nm.nc", "nanometer", "nanosecond")) as reader:
        assert np.allclose(reader.read(0, 4).coordinates, raw * 10)
        assert reader.timestep_ps == pytest.approx(1000.0)
        assert np.allclose(reader.read(0, 4).time_ps, [0, 1000, 2000, 3000])
    with TrajectoryReader(_netcdf(tmp_path / "a.nc", "angstrom", "picosecond")) as reader:
        assert np.array_equal(reader.read(0, 4).coordinates, raw) and reader.timestep_ps == 1.0
    with TrajectoryReader(_netcdf(tmp_path / "none.nc", None, None)) as reader:  # the AMBER default
        assert np.array_equal(reader.read(0, 4).coordinates, raw)
    with pytest.raises(UserError, match=r"'coordinates' has units 'furlong'"):
        TrajectoryReader(_netcdf(tmp_path / "f.nc", "furlong", None))
    with pytest.raises(UserError, match=r"'time' has units 'fortnight'"):
        TrajectoryReader(_netcdf(tmp_path / "t.nc", None, "fortnight"))


def test_uneven_time_is_one_line_error_unless_the_spacing_is_given(tmp_path):
    from asteroid_hpc.data.readers import TrajectoryReader

    path = _netcdf(tmp_path / "uneven.nc", None, None, times=(0.0, 1.0, 2.0, 4.0))
    with pytest.raises(UserError, match=r"uneven time axis: frames 2 -> 3 are 2 ps apart"):
        TrajectoryReader(path)
    TrajectoryReader(path, check_time=False).close()
    TrajectoryReader(_netcdf(tmp_path / "even.nc", None, None, times=(0.1, 0.2, 0.3, 0.4))).close()  # float32


@pytest.mark.parametrize("value", ["0", "-1", ".inf", ".nan"])
def test_timestep_fs_must_be_finite_and_positive(value):
    from asteroid_hpc.config import load_config

    with pytest.raises(UserError, match="data.timestep_fs must be finite and > 0"):
        load_config(None, [f"data.timestep_fs={value}"])


# ------------------------------------------------------------------------------------ model signature

SIGNATURE = {"input_atoms": 3, "atom_indices": [0, 2], "atomic_numbers": [8, 1], "timestep_fs": 10.0,
             "frame_stride": 10, "input_timestep_fs": 1.0, "topology": None}


def test_signature_refuses_other_atoms_or_spacing(caplog):
    from asteroid_hpc.data.signature import check_against_model

    check_against_model(SIGNATURE, np.array([8, 1, 1]), 1.0, "in.nc", "m.safetensors", False)
    check_against_model(None, np.array([6]), 9.0, "in.nc", "old.safetensors", False)  # old models: unchecked
    for numbers, dt, message in [
        ([8, 1], 1.0, "in.nc: 2 atoms, but the model m.safetensors was trained on 3-atom inputs"),
        ([8, 1, 6], 1.0, "in.nc: atom 2 is element 6, but in the training inputs of the model m.safetensors it is "
                         "element 1"),
        ([8, 1, 1], 2.0, "in.nc: frames 2 fs apart, but the model m.safetensors was trained on inputs 1 fs apart"),
    ]:
        with pytest.raises(UserError) as info:
            check_against_model(SIGNATURE, np.array(numbers), dt, "in.nc", "m.safetensors", False)
        assert str(info.value).startswith(message) and "--allow-mismatch" in str(info.value)
        check_against_model(SIGNATURE, np.array(numbers), dt, "in.nc", "m.safetensors", True)
    assert "going on: --allow-mismatch" in caplog.text


def test_signature_travels_with_the_weights(tmp_path):
    from asteroid_hpc.model import load_weights
    from tests.support.tiny import tiny_model_file

    path = tiny_model_file(tmp_path / "plain.safetensors")
    assert load_weights(path).data_signature is None
    model = load_weights(path)
    model.data_signature = SIGNATURE
    from asteroid_hpc.model import save_weights

    save_weights(model, tmp_path / "signed.safetensors")
    assert load_weights(tmp_path / "signed.safetensors").data_signature == SIGNATURE


# ------------------------------------------------------------------------------------ end to end (CLI)

def _preprocess(tmp_path, name, trajectory, topology, *overrides):
    out = tmp_path / name
    proc = run_cli("preprocess", DATA / trajectory, "--topology", DATA / topology, "-o", out, "--no-progress",
                   "data.split_fractions=[1,0,0]", "data.frames_per_shard=4", *overrides, timeout=300)
    return proc, out


@pytest.mark.parametrize("name, trajectory, topology, overrides", [
    ("amber", "Amber/bala.ncdf", "Amber/bala.prmtop", ("data.timestep_fs=2",)),  # its time axis is all zeros
    # rhombic dodecahedron, velocities; its water (frames 100 ps apart) cannot be unwrapped: the file's coordinates
    ("gromacs-trr", "adk_oplsaa.trr", "adk_oplsaa.tpr", ("data.unwrap=false",)),
])
def test_preprocess_real_engine_files(tmp_path, name, trajectory, topology, overrides):
    from asteroid_hpc.data.amber import read_frames
    from asteroid_hpc.data.topology import read_topology

    proc, out = _preprocess(tmp_path, name, trajectory, topology, *overrides)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["atomic_numbers"] == read_topology(DATA / topology).atomic_numbers.tolist()
    assert manifest["topology"] == str((DATA / topology).resolve())
    truth = _frames_of(_universe(topology, trajectory))["positions"]
    shard = manifest["shards"][0]
    x = read_frames(out / shard["file"]).coordinates
    if manifest["centered"]:
        x0 = np.stack(truth[shard["frame_start"]:shard["frame_stop"]])
        x0 = x0 - x0.mean(axis=1, keepdims=True)
        assert np.allclose(x, x0, atol=1e-3)
    else:
        assert np.allclose(x, np.stack(truth[shard["frame_start"]:shard["frame_stop"]]), atol=1e-4)


def test_preprocess_without_topology_names_the_formats(tmp_path):
    proc = run_cli("preprocess", DATA / "tip125_tric_C36.dcd", "-o", tmp_path / "x", "--no-progress")
    assert proc.returncode == 2
    assert "pass --topology FILE (.prmtop/.parm7, .tpr/.gro, .psf" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_preprocess_gromacs_xtc_with_tpr(tmp_path):
    # heavy atoms include the water oxygens, 100 ps apart: too far to unwrap (test_preprocess_unwrap unwraps the protein)
    proc, out = _preprocess(tmp_path, "gromacs", "adk_oplsaa.xtc", "adk_oplsaa.tpr", "data.atom_selection=heavy",
                            "data.unwrap=false")
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["timestep_fs"] == pytest.approx(100000.0, rel=1e-5)  # 100 ps frames
    assert 0 not in manifest["atomic_numbers"] and 1 not in manifest["atomic_numbers"]


# ------------------------------------------------------------------------------------ forecast times

def test_forecast_times_continue_the_initial_trajectory(tmp_path):
    """A member's time axis continues the initial trajectory's: appended to it, one even time axis."""
    import netCDF4

    from asteroid_hpc.data.amber import AmberWriter
    from tests.support.ensemble import ensemble_model_file

    rng = np.random.default_rng(0)
    frames = rng.normal(scale=1.5, size=(1, 9, 3)) + 0.05 * rng.normal(size=(12, 9, 3))
    initial = tmp_path / "initial.nc"
    with AmberWriter(initial, 9, rng.choice([1, 6, 8], size=9), timestep_ps=0.01) as writer:
        writer.append(frames.astype(np.float32), 5.0 + 0.01 * np.arange(12))  # starts at 5 ps
    model = ensemble_model_file(tmp_path / "model.safetensors")
    out = tmp_path / "ens"
    proc = run_cli("ensemble-forecast", model, initial, "-o", out, "ensemble.members=1",
                   "ensemble.horizon_frames=3", "ensemble.noise_angstrom=0", timeout=300)
    assert proc.returncode == 0, proc.stderr
    with netCDF4.Dataset(out / "members" / "member_00000.nc") as ds:
        assert np.allclose(ds["time"][:], [5.12, 5.13, 5.14], atol=1e-4)
    with netCDF4.Dataset(out / "mean.nc") as ds:
        assert np.allclose(ds["time"][:], [5.12, 5.13, 5.14], atol=1e-4)


@pytest.mark.slow
def test_trained_model_records_its_signature_and_refuses_other_inputs(tmp_path_factory):
    """train records the dataset's atoms and frame spacing with the model (checkpoint and export alike);
    evaluate and ensemble-forecast refuse a trajectory 2× as far apart in time, naming both."""
    from asteroid_hpc.data.amber import AmberReader, AmberWriter
    from asteroid_hpc.data.signature import signature_of_manifest
    from asteroid_hpc.model import load_weights
    from asteroid_hpc.train.export import export_checkpoint
    from asteroid_hpc.train.model_files import open_model
    from tests.support.tiny import make_tiny_dataset, small_ethanol_trajectory
    from tests.support.train import run_train

    root = tmp_path_factory.mktemp("signature")
    base = tmp_path_factory.getbasetemp() / "train-data"
    dataset = make_tiny_dataset(base)
    run = root / "run"
    run_train(dataset, run, "train.max_steps=4", "train.checkpoint_every=2", "train.val_every=2")
    exported = export_checkpoint(run, root / "model.safetensors")
    expected = signature_of_manifest(json.loads((dataset / "manifest.json").read_text()))
    assert load_weights(exported).data_signature == expected == open_model(run).data_signature

    with AmberReader(small_ethanol_trajectory(base / "ethanol.nc")) as reader:
        chunk, numbers, dt = reader.read(0, reader.n_frames), reader.atomic_numbers, reader.timestep_ps
    slow = root / "slow.nc"
    with AmberWriter(slow, len(numbers), numbers, timestep_ps=2 * dt) as writer:
        writer.append(chunk.coordinates)
    for proc in (run_cli("evaluate", exported, slow, "-o", root / "eval", "--protocol", "C"),
                 run_cli("ensemble-forecast", exported, slow, "-o", root / "ens")):
        assert proc.returncode == 2, proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert f"slow.nc: frames {2 * dt * 1000:g} fs apart, but the model {exported} was trained on inputs " \
               f"{dt * 1000:g} fs apart" in last


@pytest.mark.mpi
@pytest.mark.parametrize("trajectory, topology, options", [
    ("adk_dims.dcd", "adk.psf", ()),
    # periodic: its protein is unwrapped (the water, 100 ps apart, cannot be), the ranges chained across ranks
    ("adk_oplsaa.xtc", "adk_oplsaa.tpr", ("data.atom_selection=protein",))])
def test_two_ranks_split_one_long_file(tmp_path, trajectory, topology, options):
    """The frames of one .dcd/.xtc are dealt to two ranks by shard (random access by frame offsets): the same
    dataset as one process, each rank writing some of it."""
    from tests.support.cli import run_mpi
    from tests.support.data import dataset_fingerprint

    opts = ["--topology", DATA / topology, "data.split_fractions=[1,0,0]", "data.frames_per_shard=3",
            "--no-progress", *options]
    one = run_cli("preprocess", DATA / trajectory, "-o", tmp_path / "one", *opts, timeout=300)
    assert one.returncode == 0, one.stderr
    two = run_mpi(2, "-m", "asteroid_hpc", "preprocess", DATA / trajectory, "-o", tmp_path / "two", *opts,
                  timeout=300, mpi4py_runner=False)
    assert two.returncode == 0, two.stderr
    assert dataset_fingerprint(tmp_path / "one") == dataset_fingerprint(tmp_path / "two")
    writers = {json.loads(p.read_text())["written_by_rank"] for p in (tmp_path / "two" / "shards").glob("*.json")}
    assert writers == {0, 1}
