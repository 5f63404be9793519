#!/usr/bin/env bash
# For a GPU machine without network whose image has torch (and numpy, scipy, pandas, matplotlib, seaborn,
# scikit-learn, pyyaml, tqdm, pytest) but not the rest of what wavebench needs: run this on a machine WITH
# network; it downloads the 50 wheels such an image typically lacks (MLflow, submitit, Optuna, torch-fidelity,
# pytorch_wavelets and their dependencies; about 40 MB for Python 3.12, x86-64) into .whl/. Edit
# --python-version below if the GPU machine runs another Python.
#
# Use, from the project root:
#   bash tools/gpu-wheels.sh            # writes .whl/ (ignored by git)
# copy the project with .whl/ to the GPU machine, and there:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site:$PWD
#   make gpu-check PY=python3
# Seen on an H200 machine (torch 2.11, CUDA 13): `python -m bench.run --grid ...` with MLflow's SQLite store,
# torch-fidelity metrics on CUDA and `python -m bench.perf --device cuda` all ran with exactly these wheels.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
mkdir -p .whl
WHEELS="alembic==1.20.1 annotated_types==0.8.0 blinker==1.9.0 cachetools==7.3.3 cffi==2.1.1 colorlog==6.12.0
cryptography==50.0.2 databricks_sdk==0.162.0 docker==7.2.0 fastapi==0.165.0 flask==3.1.3 flask_cors==6.0.5
gitdb==4.0.12 gitpython==3.2.1 google_auth==2.63.0 graphene==3.4.3 graphql_core==3.2.14 graphql_relay==3.2.0
gunicorn==26.2.0 huey==3.5.4 importlib_metadata==9.1.0 itsdangerous==2.2.0 mako==1.4.3 mlflow==3.17.0
mlflow_skinny==3.17.0 mlflow_tracing==3.17.0 opentelemetry_api==1.45.2 opentelemetry_proto==1.45.2
opentelemetry_sdk==1.45.2 opentelemetry_semantic_conventions==0.66b2 optuna==5.0.0 prettytable==3.18.0
pyasn1==0.6.5 pyasn1_modules==0.4.2 pycparser==3.12 pydantic==2.14.4 pydantic_core==2.50.5 python_dotenv==1.2.4
pytorch_wavelets==1.3.0 pywavelets==1.10.0 skops==0.16.0 smmap==5.0.3 sqlalchemy==2.1.9 sqlparse==0.6.1
starlette==1.10.0 submitit==1.5.4 torch_fidelity==0.4.0 typing_inspection==0.4.5 uvicorn==0.54.0 wcwidth==0.9.4"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform any -d .whl $WHEELS 2>&1 | grep -v "^WARNING: Location" || true
echo "$(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl/ (carry it: the working tree may be 64 MiB in all)"
