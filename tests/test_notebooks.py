"""The notebooks as files: what papermill and Jupyter need of them, checked without running them."""
import json
import warnings

import nbformat

from relam.runner import NOTEBOOK_DIR


def test_every_notebook_is_valid_with_unique_cell_ids_and_a_parameters_cell():
    """A cell added by a script without an id passes papermill today with a warning, and is an error in the next
    nbformat; papermill injects parameters after the cell tagged 'parameters'."""
    paths = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    assert len(paths) >= 8
    for path in paths:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            nbformat.validate(json.loads(path.read_text()), version=4)
        nb = nbformat.read(path, as_version=4)
        ids = [c.get("id") for c in nb.cells]
        assert all(ids) and len(set(ids)) == len(ids), f"{path.name}: cells without an id or with a repeated one"
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1 and tagged[0].cell_type == "code", f"{path.name}: needs one 'parameters' code cell"
