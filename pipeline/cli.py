"""``mccl pipeline``: compile the Kubeflow pipeline, or submit it to a KFP endpoint.

    mccl pipeline compile [--out pipeline/mccl_pipeline.yaml]
    mccl pipeline submit --host https://kubeflow.example.com/pipeline \\
        [--run-name NAME] [--experiment mccl] [--param accelerators_per_node=4 --param 'launch={backend: pytorchjob, nnodes: 2}' ...]
        [--params-file params.yaml]

``--param`` values are parsed as YAML (``2`` -> int, ``{epochs: 30}`` -> dict). ``--params-file``
sends the sections of a params file as the pipeline's section parameters. Authentication: the
standard KFP client environment (``KF_PIPELINES_SA_TOKEN_PATH``, or ``--existing-token``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)


class SubmitError(RuntimeError):
    """The pipeline could not be submitted (unreachable endpoint, bad parameter)."""


def parse_params(items: list[str], params_file: Path | None) -> dict[str, Any]:
    from pipeline.pipeline import SECTION_PARAMETERS

    arguments: dict[str, Any] = {}
    if params_file is not None:
        from mccl_core.config import load_params

        for section, value in load_params(params_file).items():
            if section in SECTION_PARAMETERS:
                arguments[SECTION_PARAMETERS[section]] = value
    for item in items:
        if "=" not in item:
            raise SubmitError(f"--param expects NAME=VALUE, got {item!r}")
        name, raw = item.split("=", 1)
        arguments[name.strip()] = yaml.safe_load(raw)
    return arguments


def check_endpoint(host: str, timeout_s: float = 10.0) -> None:
    """Fail fast with a clear message when ``host`` does not answer (instead of a long stack trace)."""
    import requests

    try:
        requests.get(host.rstrip("/") + "/apis/v2beta1/healthz", timeout=timeout_s)
    except requests.RequestException as error:
        raise SubmitError(
            f"the Kubeflow Pipelines endpoint {host} is not reachable ({type(error).__name__}: {error}). "
            "Check --host (e.g. https://<kubeflow>/pipeline, or http://localhost:8080 after "
            "`kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80`)."
        ) from error


def submit(host: str, package: Path, arguments: dict[str, Any], run_name: str | None, experiment: str,
           namespace: str | None = None, existing_token: str | None = None) -> str:  # fmt: skip
    """Submit ``package`` as a run; returns the run id."""
    import kfp

    if not package.is_file():
        raise SubmitError(f"compiled pipeline {package} not found; run `mccl pipeline compile` first")
    check_endpoint(host)
    try:
        client = kfp.Client(host=host, namespace=namespace, existing_token=existing_token)
        result = client.create_run_from_pipeline_package(
            str(package), arguments=arguments, run_name=run_name, experiment_name=experiment, namespace=namespace
        )
    except Exception as error:
        raise SubmitError(f"submitting to {host} failed: {type(error).__name__}: {error}") from error
    return str(result.run_id)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mccl pipeline", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    comp = commands.add_parser("compile", help="write the pipeline spec YAML")
    comp.add_argument("--out", type=Path, default=None, help="default: pipeline/mccl_pipeline.yaml")
    sub = commands.add_parser("submit", help="submit a run to a KFP endpoint")
    sub.add_argument("--host", required=True, help="KFP API endpoint, e.g. https://kubeflow.example.com/pipeline")
    sub.add_argument("--package", type=Path, default=None, help="compiled YAML (default: compile now to a temp file)")
    sub.add_argument("--run-name", default=None)
    sub.add_argument("--experiment", default="mccl")
    sub.add_argument("--namespace", default=None, help="Kubeflow profile namespace (multi-user installs)")
    sub.add_argument("--existing-token", default=None, help="bearer token for the endpoint")
    sub.add_argument("--param", action="append", default=[], metavar="NAME=VALUE", help="pipeline parameter")
    sub.add_argument("--params-file", type=Path, default=None, help="send this params.yaml's sections")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from pipeline.pipeline import COMPILED, compile_pipeline

    try:
        if args.command == "compile":
            path = compile_pipeline(args.out or COMPILED)
            print(f"compiled pipeline: {path}")
            return 0
        arguments = parse_params(args.param, args.params_file)
        package = args.package
        if package is None:
            import tempfile

            package = compile_pipeline(Path(tempfile.mkdtemp()) / "mccl_pipeline.yaml")
        run_id = submit(
            args.host, package, arguments, args.run_name, args.experiment, args.namespace, args.existing_token
        )
        print(f"submitted run {run_id} to {args.host}")
        return 0
    except SubmitError as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
