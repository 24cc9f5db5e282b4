"""The plugin registers itself with anomalib without costing anything at interpreter start-up."""

from __future__ import annotations

import subprocess
import sys

import pytest


def _python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


def test_start_up_imports_nothing_heavy() -> None:
    loaded = _python("import sys; print(sorted(m for m in ('torch', 'anomalib', 'anomalib_simplenet') if m in sys.modules))")
    assert loaded == "[]"


def test_importing_anomalib_models_registers_the_plugin() -> None:
    code = (
        "import sys, anomalib.models as m; "
        "print('anomalib_simplenet' in sys.modules, 'SimpleNet' in m.list_models(case='pascal'))"
    )
    assert _python(code) == "True True"


def test_get_model_by_short_name_passes_init_args() -> None:
    from anomalib.models import get_model

    from anomalib_simplenet import SimpleNet

    model = get_model("simplenet", backbone="resnet18", pre_trained=False, image_size=64)
    assert type(model) is SimpleNet
    assert model.model.feature_extractor.feature_info.channels() == [128, 256]
    bases = [base.__name__ for base in SimpleNet.__bases__]
    assert "AnomalibModule" in bases, "must be a direct AnomalibModule subclass"


@pytest.mark.parametrize("name", ["SimpleNet", "anomalib_simplenet.SimpleNet"])
def test_cli_resolves_the_model_and_its_arguments(name: str) -> None:
    from anomalib.cli import AnomalibCLI

    cli = AnomalibCLI(
        ["fit", "--model", name, "--model.backbone", "resnet18", "--model.pre_trained", "false", "--model.noise_std", "0.02", "--data", "MVTecAD"],
        run=False,
    )
    init_args = cli.config["fit"]["model"]["init_args"]
    class_path = cli.config["fit"]["model"]["class_path"]
    assert class_path.startswith("anomalib_simplenet.") and class_path.endswith(".SimpleNet")
    assert init_args["backbone"] == "resnet18"
    assert init_args["noise_std"] == 0.02
