"""Cut the KServe CRDs down to the openAPIV3Schema parts the manifest tests need (see README.md).

Run: ``python tests/data/kserve/extract_schemas.py ISVC_CRD.yaml SR_CRD.yaml`` (the CRD files of
kserve/kserve ``config/crd/full/``); writes the two ``*.schema.json`` files next to this script.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
# InferenceService branches no tokenbench manifest uses; each is a full pod spec (hundreds of KB).
ISVC_DROP_SPEC = ("canary", "explainer", "transformer")
ISVC_DROP_PREDICTOR = ("workerSpec",)


def schema_of(crd_path: str, version: str) -> dict[str, Any]:
    crd = yaml.safe_load(Path(crd_path).read_text(encoding="utf-8"))
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            return v["schema"]["openAPIV3Schema"]
    raise SystemExit(f"{crd_path}: no version {version}")


def main(isvc_crd: str, sr_crd: str) -> None:
    isvc = schema_of(isvc_crd, "v1beta1")
    spec = isvc["properties"]["spec"]["properties"]
    for key in ISVC_DROP_SPEC:
        spec.pop(key, None)
    for key in ISVC_DROP_PREDICTOR:
        spec["predictor"]["properties"].pop(key, None)
    sr = schema_of(sr_crd, "v1alpha1")
    for name, schema in (("inferenceservice.v1beta1", isvc), ("servingruntime.v1alpha1", sr)):
        out = HERE / f"{name}.schema.json"
        out.write_text(json.dumps(schema, sort_keys=True, separators=(",", ":")) + "\n", encoding="utf-8")
        print(out, out.stat().st_size)


if __name__ == "__main__":
    main(*sys.argv[1:3])
