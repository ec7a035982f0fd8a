"""A minimal MLServer runtime that runs an ONNX file with onnxruntime.

`cleave export --format mlserver` copies this file next to the exported tails and names it
in each model-settings.json (`"implementation": "cleave_onnx_runtime.OnnxRuntimeModel"`).
It knows nothing about cleave: it takes the standard-datatype tensors a request carries,
feeds them to the ONNX model by name, and answers with every model output.

It reports its compute time as the response parameter `compute_ms` (a string: MLServer's
gRPC layer drops float parameters), which `cleave run --edge-kind oip` reads when present;
`"parameters": {"extra": {"report_times": false}}` in model-settings.json turns that off.
"""

import os
import time

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse, Parameters
from mlserver.utils import get_model_uri


class OnnxRuntimeModel(MLModel):
    async def load(self) -> bool:
        path = await get_model_uri(self.settings)
        if os.path.isdir(path):
            path = os.path.join(path, "model.onnx")
        opts = ort.SessionOptions()
        threads = int(os.environ.get("CLEAVE_ORT_THREADS", "1"))
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self._session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self._input_types = {i.name: i.type for i in self._session.get_inputs()}
        self._output_names = [o.name for o in self._session.get_outputs()]
        extra = (self.settings.parameters.extra if self.settings.parameters else None) or {}
        self._report_times = bool(extra.get("report_times", True))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {}
        for request_input in payload.inputs:
            if request_input.name not in self._input_types:
                raise ValueError(f"unknown input `{request_input.name}` (inputs: {sorted(self._input_types)})")
            feeds[request_input.name] = np.ascontiguousarray(NumpyCodec.decode_input(request_input))
        missing = sorted(set(self._input_types) - set(feeds))
        if missing:
            raise ValueError(f"missing inputs: {missing}")
        t0 = time.perf_counter()
        results = self._session.run(self._output_names, feeds)
        compute_ms = (time.perf_counter() - t0) * 1e3
        outputs = [NumpyCodec.encode_output(name, np.asarray(value)) for name, value in zip(self._output_names, results)]
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            id=payload.id,
            outputs=outputs,
            parameters=Parameters(compute_ms=f"{compute_ms:.3f}") if self._report_times else None,
        )
