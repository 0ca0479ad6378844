"""Real local services for development, the demo's S3 mode and tests, all on 127.0.0.1:
SeaweedFS S3 (:mod:`.s3`), an MLflow server (:mod:`.mlflow_server`), started detached for the
``cluster/local`` scripts by ``python -m conclugen.devtools`` (:mod:`.cli`). Each server runs in its
own process group (:mod:`.processes`) so that stopping it ends every child; servers started from
Python stop at interpreter exit unless started with ``detach=True``."""
