"""Report inputs with one CSV cell (or header) or one JSON value corrupted at random: the check refuses with one
line naming the file, or accepts, and from what it accepts the report's tables are built without an exception."""

import csv
import json
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vqnqs.report import ReportInputError, inputs_from_params
from vqnqs.report.document import collect_tables, scaling_fits, summary
from vqnqs.report.vq_training import comparison, error_curves

from .conftest import PARAMS

FILES = inputs_from_params(PARAMS, "data").all_files()
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8)
JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
    st.lists(st.integers(), max_size=3),
    st.dictionaries(TEXT, st.integers(), max_size=2),
)


def corrupt(path: Path, data) -> None:
    """One cell of the CSV (the header's included) or one value of the JSON record at ``path``, drawn."""
    if path.suffix == ".csv":
        with path.open(newline="") as handle:
            rows = list(csv.reader(handle))
        row = data.draw(st.integers(0, len(rows) - 1))
        rows[row][data.draw(st.integers(0, len(rows[row]) - 1))] = data.draw(TEXT)
        with path.open("w", newline="") as handle:
            csv.writer(handle, lineterminator="\n").writerows(rows)
    else:
        record = json.loads(path.read_text())
        record[data.draw(st.sampled_from(sorted(record)))] = data.draw(JUNK)
        path.write_text(json.dumps(record))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_one_corrupted_input_is_refused_naming_its_file_or_accepted(pipeline, data):
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        for path in FILES:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(pipeline / path, root / path)
        path = root / data.draw(st.sampled_from(FILES))
        corrupt(path, data)
        inputs = inputs_from_params(PARAMS, root / "data")
        try:
            inputs.check(PARAMS)
        except ReportInputError as err:
            message = str(err)
            assert message.startswith(f"{path}: ") and "\n" not in message, message
            return
        tables = collect_tables(inputs, PARAMS)
        scaling_fits(tables["components"])
        summary(tables["table1"], inputs)
        comparison(inputs)
        error_curves(inputs)
