"""`keras-xception serve`: the model over HTTP.

One process (or one Ray Serve replica) holds one `service.Service`: the
model source, the fast predictor and the rules that turn request payloads
into pixels. `app.build_app(service, settings)` wraps it in one FastAPI app
that speaks:

- TensorFlow Serving's REST API (`tfserving`): `POST /v1/models/NAME:predict`;
- the Open Inference Protocol v2 with the binary tensor data extension
  (`oip`): `POST /v2/models/NAME/infer`;
- `POST /v1/models/NAME:classify` and `:explain` for people and the page
  (`page/`, served at `/`);
- `GET /metrics` (Prometheus).

Requests from many clients are batched by `batcher.Batcher`: up to
`max_batch_size` images per model call, waiting at most `batch_wait_ms`
after the first, one model call in flight, a bounded queue that answers 503
at once. `keras_xception.cli.serve` runs it under uvicorn; reference:
docs/serve.md.

Only `app` imports FastAPI, Starlette and prometheus-client; `service`,
`batcher`, `tfserving` and `oip` need NumPy alone (and Keras once a model is
loaded), so they are tested without a server.
"""
