@echo off
rem Install LatentSync MEMSAFE's requirements into ComfyUI's Python, without touching its torch, then fetch the
rem checkpoints (resumable; skipped when offline or with SKIP_DOWNLOAD=1) and report what works.
rem
rem   install_for_comfyui.bat [PATH_TO_COMFYUI_PYTHON]
rem
rem Without an argument the Python is, in this order: %COMFYUI_PYTHON%; the portable build's python_embeded;
rem ComfyUI's venv or .venv; the python on PATH. Checkpoints go to ComfyUI's models\latentsync.
setlocal EnableExtensions EnableDelayedExpansion

set "HERE=%~dp0"
if "%HERE:~-1%"=="\" set "HERE=%HERE:~0,-1%"
for %%I in ("%HERE%\..\..") do set "COMFY_ROOT=%%~fI"
if not exist "%COMFY_ROOT%\main.py" set "COMFY_ROOT="

set "PY=%~1"
if "%PY%"=="" set "PY=%COMFYUI_PYTHON%"
if "%PY%"=="" if not "%COMFY_ROOT%"=="" if exist "%COMFY_ROOT%\..\python_embeded\python.exe" set "PY=%COMFY_ROOT%\..\python_embeded\python.exe"
if "%PY%"=="" if not "%COMFY_ROOT%"=="" if exist "%COMFY_ROOT%\python_embeded\python.exe" set "PY=%COMFY_ROOT%\python_embeded\python.exe"
if "%PY%"=="" if not "%COMFY_ROOT%"=="" if exist "%COMFY_ROOT%\venv\Scripts\python.exe" set "PY=%COMFY_ROOT%\venv\Scripts\python.exe"
if "%PY%"=="" if not "%COMFY_ROOT%"=="" if exist "%COMFY_ROOT%\.venv\Scripts\python.exe" set "PY=%COMFY_ROOT%\.venv\Scripts\python.exe"
if "%PY%"=="" if defined VIRTUAL_ENV if exist "%VIRTUAL_ENV%\Scripts\python.exe" set "PY=%VIRTUAL_ENV%\Scripts\python.exe"
if "%PY%"=="" (
    echo Could not find ComfyUI's Python. Run: %~nx0 C:\path\to\python_embeded\python.exe 1>&2
    exit /b 2
)
echo Using ComfyUI's Python: %PY%

set "TORCH="
for /f "delims=" %%V in ('"%PY%" -c "import torch; print(torch.__version__)" 2^>nul') do set "TORCH=%%V"
if "%TORCH%"=="" (
    echo torch is not installed in %PY%. Install ComfyUI with the torch build for your GPU first. 1>&2
    exit /b 2
)
echo Keeping its torch %TORCH%

set "CONSTRAINTS=%TEMP%\latentsync-constraints-%RANDOM%.txt"
"%PY%" -c "import sys; from importlib import metadata as m; out=open(sys.argv[1],'w'); [out.write(f'{n}=={m.version(n)}\n') for n in ('torch','torchvision','torchaudio','xformers') if __import__('importlib.util').util.find_spec(n)]" "%CONSTRAINTS%"
"%PY%" -m pip install -r "%HERE%\requirements.txt" -c "%CONSTRAINTS%"
set "PIP_RC=%ERRORLEVEL%"
rem onnxruntime: an installed build is kept (the CPU package beside onnxruntime-gpu breaks its CUDA provider);
rem without one, onnxruntime-gpu where torch sees CUDA, onnxruntime elsewhere
set "ORT="
if "%PIP_RC%"=="0" for /f "delims=" %%R in ('cd /d "%HERE%" ^&^& "%PY%" -m latentsync.tools.choose_onnxruntime') do set "ORT=%%R"
if "%PIP_RC%"=="0" if not "%ORT%"=="" "%PY%" -m pip install "%ORT%" -c "%CONSTRAINTS%"
if "%PIP_RC%"=="0" if not "%ORT%"=="" set "PIP_RC=%ERRORLEVEL%"
del "%CONSTRAINTS%" >nul 2>&1
if not "%PIP_RC%"=="0" exit /b %PIP_RC%

set "AFTER="
for /f "delims=" %%V in ('"%PY%" -c "import torch; print(torch.__version__)"') do set "AFTER=%%V"
if not "%AFTER%"=="%TORCH%" (
    echo WARNING: torch changed from %TORCH% to %AFTER%; reinstall ComfyUI's torch build. 1>&2
    exit /b 1
)

set "CHECKPOINTS=%LATENTSYNC_CHECKPOINTS%"
if "%CHECKPOINTS%"=="" if not "%COMFY_ROOT%"=="" set "CHECKPOINTS=%COMFY_ROOT%\models\latentsync"
if "%CHECKPOINTS%"=="" set "CHECKPOINTS=%HERE%\checkpoints"
if "%SKIP_DOWNLOAD%"=="1" (
    echo SKIP_DOWNLOAD=1: not downloading checkpoints
) else (
    "%PY%" -c "import socket; socket.create_connection(('huggingface.co', 443), timeout=5).close()" >nul 2>&1
    if errorlevel 1 (
        echo Offline: not downloading. Later run: cd /d "%HERE%" ^&^& "%PY%" -m latentsync.checkpoints download --dir "%CHECKPOINTS%"
    ) else (
        echo Downloading checkpoints into %CHECKPOINTS% ^(resumable: run again if it stops^)
        pushd "%HERE%"
        "%PY%" -m latentsync.checkpoints download --version 1.6 --dir "%CHECKPOINTS%"
        if errorlevel 1 echo WARNING: the download did not finish; run this script again to resume. 1>&2
        popd
    )
)

if exist "%HERE%\verify_installation.py" (
    pushd "%HERE%"
    "%PY%" verify_installation.py --checkpoints "%CHECKPOINTS%"
    popd
)
echo Done. Restart ComfyUI; the nodes are under LatentSync (template: LatentSync lip sync).
endlocal
