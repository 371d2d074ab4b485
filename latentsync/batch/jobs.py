"""The jobs file of a batch: CSV (a header row; UTF-8 with or without Excel's byte-order mark, or UTF-16) or JSON
Lines (one object per line; a .json file may also hold one array of objects), one job per row: ``video``, ``audio``,
``output`` and any option by its column (``Option.column``: the flag without dashes). ``read_jobs`` checks the whole
file before any work; ``settle`` gives a job its checked settings.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..checkpoints import VERSIONS
from ..errors import JobsFileError
from ..model_set import ModelChoice
from ..options import LOAD, RUN, PipelineOptions, output_fields, pipeline_options
from ..paths import check_not_an_input, check_output_name

JOB_FIELDS = ("video", "audio", "output")
LINES = "lines"  # instead of audio: a scene's edit list, AUDIO@START[@FACE] items separated by ';'
JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
COLUMNS = {option.column: option for option in (*LOAD.values(), *RUN.values()) if option.column is not None}


@dataclass
class Job:
    index: int  # its place among the jobs, from 1 (the manifest's "job")
    video: Path
    audio: Path | None  # None when the job is a scene of ``lines``
    output: Path
    cells: dict = field(default_factory=dict)  # its own values as written, by column (``Option.column``)
    lines: tuple = ()  # a scene's lines (``latentsync.scene.Line``), their audio paths resolved
    where: str = ""  # where it is written, for error sentences: "jobs.csv line 3"
    models: ModelChoice | None = None  # its checked settings (``settle``): what it loads ...
    options: PipelineOptions | None = None  # ... and how it runs

    @property
    def speech(self):
        """What the pipeline syncs to: the audio file, or the scene's lines."""
        return list(self.lines) if self.lines else self.audio

    @property
    def inputs(self) -> dict:
        """The files it reads, by name."""
        sounds = {f"lines item {n}": line.audio for n, line in enumerate(self.lines, 1)} if self.lines else {
            "audio": self.audio}
        return {"video": self.video, **sounds}

    def settings(self) -> dict:
        """What makes its output (the manifest keeps it: a done job whose settings changed is redone)."""
        values = {**vars(self.models), **vars(self.options)}
        kept = {name: values[name] for name in output_fields()}
        scene = {LINES: [[str(line.audio), line.start, line.face] for line in self.lines]} if self.lines else {}
        return {**kept, **scene, "resolution": str(VERSIONS[self.models.version].resolution),
                "checkpoints": self.models.checkpoints, "unet_config": self.models.unet_config}


def settle(job: Job, defaults: dict, paths: dict) -> Job:
    """The job with its checked settings: the command line's ``defaults`` (option field -> value) under its own
    cells, each read as its flag reads it; ``paths``: the checkpoints, unet_config and device of every job."""
    values = dict(defaults)
    for column, raw in job.cells.items():
        option = COLUMNS[column]
        values[option.field] = option.parse(raw, f"{job.where}, column {column}")
    job.models = ModelChoice.of(values, **paths)
    job.options = pipeline_options(values)
    check_output_name(job.output, job.options.codec, f"{job.where}: output")
    return job


def read_jobs(path: str | Path, option_names: set[str] = frozenset(COLUMNS)) -> list[Job]:
    """The jobs of a CSV or JSON Lines file; one sentence naming the line (and the column) when a row is unusable,
    when two jobs write one output, or when a job's output is a job's input."""
    path = Path(path)
    if not path.is_file():
        raise JobsFileError(f"jobs file not found: {path}")
    text = _decoded(path)
    rows = _json_rows(path, text) if path.suffix.lower() in JSON_SUFFIXES else _csv_rows(path, text)
    if not rows:
        raise JobsFileError(f"{path} has no jobs: give a header row (video,audio,output,...) and one row per job")
    jobs = []
    for index, (where, row) in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise JobsFileError(f"{where} is not an object with video, audio and output")
        row = {str(name).strip(): value for name, value in row.items()}
        for name, value in row.items():
            if isinstance(value, (list, dict)):
                raise JobsFileError(f"{where}, column {name}: a {type(value).__name__} is not a value; give one "
                                    "number or word")
        scene = str(row.get(LINES) or "").strip()
        needed = [name for name in JOB_FIELDS if not (scene and name == "audio")]
        missing = [name for name in needed if not str(row.get(name) or "").strip()]
        if missing:
            raise JobsFileError(f"{where} has no {', '.join(missing)}" + (" (or lines)" if "audio" in missing else ""))
        if scene and str(row.get("audio") or "").strip():
            raise JobsFileError(f"{where} has both audio and lines: give one (lines: a scene's edit list)")
        unknown = sorted(set(row) - set(JOB_FIELDS) - {LINES} - option_names)
        if unknown:
            raise JobsFileError(f"{where} has unknown columns {', '.join(unknown)}: use the command line's option "
                                f"names ({', '.join(sorted(option_names))})")
        broken = [name for name in (*needed, *([LINES] if scene else [])) if any(mark in str(row[name])
                                                                               for mark in "\n\r")]
        if broken:
            raise JobsFileError(f"{where}: the {', '.join(broken)} path holds a line break (a quote left open?): "
                                "give each path on one line")
        # paths resolved from the jobs file's folder: workers run elsewhere
        paths = [(path.parent / str(row[name]).strip()).resolve() if name in needed else None for name in JOB_FIELDS]
        options = {name: value for name, value in row.items()
                   if name not in (*JOB_FIELDS, LINES) and value is not None and str(value).strip() != ""}
        jobs.append(Job(index, *paths, cells=options, where=where, lines=_scene_lines(scene, path.parent, where)))
    _check_outputs(jobs)
    return jobs


def _decoded(path: Path) -> str:
    """The file's text: UTF-16 by its byte-order mark, else UTF-8 (Excel's mark dropped)."""
    data = path.read_bytes()
    encoding = "utf-16" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else "utf-8-sig"
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as error:
        raise JobsFileError(f"{path} is not {encoding.upper().replace('-SIG', '')} text (byte {error.start}): save it "
                            "as UTF-8 (Excel: CSV UTF-8)") from None


def _json_rows(path: Path, text: str) -> list[tuple[str, object]]:
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):  # one JSON array of objects
        try:
            items = json.loads(text)
        except json.JSONDecodeError as error:
            raise JobsFileError(f"{path.name} line {error.lineno} is not JSON ({error.msg})") from None
        return [(f"{path.name} job {number}", item) for number, item in enumerate(items, 1)]
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append((f"{path.name} line {number}", json.loads(line)))
            except json.JSONDecodeError as error:
                raise JobsFileError(f"{path.name} line {number} is not JSON ({error.msg})") from None
    return rows


def _csv_rows(path: Path, text: str) -> list[tuple[str, dict]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)  # strict: an unclosed quote is an error
    header = None
    rows = []
    while True:
        line = reader.line_num + 1
        try:
            cells = next(reader, None)
        except csv.Error as error:
            raise JobsFileError(f"{path.name} line {line}: " + ("a quote is opened and never closed" if "end of data"
                                                                 in str(error) else str(error))
                                + "; close it, or remove the stray quote") from None
        if cells is None:
            break
        if not any(cell.strip() for cell in cells):
            continue  # a blank line (or a row of empty cells, as spreadsheets write)
        if header is None:
            _check_header(path, reader.line_num, cells)
            header = [cell.strip() for cell in cells]
            named = [name for name in header if name]
            twice = sorted({name for name in named if named.count(name) > 1})
            if twice:
                raise JobsFileError(f"{path.name} line {reader.line_num}: the header names {', '.join(twice)} more "
                                    "than once; keep one column of each")
            continue
        where = f"{path.name} line {reader.line_num}"
        if len(cells) > len(header) and any(cell.strip() for cell in cells[len(header):]):
            raise JobsFileError(f"{where} has {len(cells)} cells and the header {len(header)}: quote values that "
                                "hold a comma")
        row = {name: cell for name, cell in zip(header, cells) if name}
        unnamed = [cell for name, cell in zip(header, cells) if not name and cell.strip()]
        if unnamed:
            raise JobsFileError(f"{where} has a value under a header cell with no name: name that column")
        rows.append((where, row))
    return rows


def _check_header(path: Path, line: int, cells: list[str]) -> None:
    """A header of the wrong separator or in capitals, named: read as it is, its rows would say "no video"."""
    names = [cell.strip() for cell in cells]
    if len(names) == 1 and any(mark in names[0] for mark in ";\t|"):
        separator = next(mark for mark in ";\t|" if mark in names[0])
        raise JobsFileError(f"{path.name} line {line}: the header is one cell separated by {separator!r}: separate "
                            "the columns with commas (a spreadsheet's CSV with commas), or save it as JSON Lines")
    known = {*JOB_FIELDS, *COLUMNS}
    capitals = [name for name in names if name not in known and name.lower().replace("-", "_") in known]
    if capitals:
        raise JobsFileError(f"{path.name} line {line}: column names are lower case: write "
                            f"{', '.join(name.lower().replace('-', '_') for name in capitals)} for "
                            f"{', '.join(capitals)}")


def _scene_lines(cell: str, folder: Path, where: str) -> tuple:
    """A ``lines`` cell's lines, their audio resolved from ``folder``; one sentence naming the item otherwise."""
    from ..scene import Line, parse_line

    lines = []
    for number, item in enumerate((item for item in cell.split(";") if item.strip()), 1):
        line = parse_line(item, f"{where}, column lines, item {number}")
        lines.append(Line((folder / str(line.audio).strip()).resolve(), line.start, line.face))
    return tuple(lines)


def _check_outputs(jobs: list[Job]) -> None:
    """No two jobs write one file, and no job writes a file that a job reads (paths are resolved already; files
    that exist are also compared as inodes: hard links, case-insensitive folders)."""
    writers: dict = {}
    for job in jobs:
        check_not_an_input(job.output, job.inputs, f"{job.where}: output")
        earlier = writers.setdefault(_file_key(job.output), job)
        if earlier is not job:
            raise JobsFileError(f"{earlier.where} and {job.where} both write {job.output}: the second would replace "
                                "the first; give each job its own output")
    for reader in jobs:
        for name, source in reader.inputs.items():
            writer = writers.get(_file_key(source))
            if writer is not None:
                raise JobsFileError(f"{writer.where} writes {writer.output}, which {reader.where} reads as its {name}: "
                                    "give the output another name")


def _file_key(path: Path):
    try:
        stat = path.stat()
    except OSError:  # not there yet: its resolved path names it
        return path
    return stat.st_dev, stat.st_ino
