# napari-cnnvision: `make demo` shows the plugin, `make test` runs the test suite.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

# Packages napari needs for an OpenGL context under Xvfb (headless Linux).
APT_PACKAGES := xvfb xauth libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 \
	libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 libxcb-xinput0 libxcb-xfixes0 libxcb-shape0 \
	libxcb-cursor0 libegl1 libdbus-1-3 libopengl0 libfontconfig1

.PHONY: demo test install sysdeps benchmarks clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e ".[testing]"
	rm -rf src/*.egg-info  # build leftover: napari would find the plugin's metadata twice
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

install: $(STAMP)

# Installs the X/GL libraries when they are missing and we may (root, Debian/Ubuntu).
sysdeps:
	@if [ "$$(uname -s)" = Linux ] && ! command -v Xvfb >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing Xvfb and the X/OpenGL libraries napari needs"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
		else \
			echo "Xvfb is missing: install $(APT_PACKAGES)"; \
		fi; \
	fi

test: $(STAMP) sysdeps
	QT_API=pyqt6 $(PY) -m pytest -ra --durations=25

demo: $(STAMP)
	@if [ -n "$$DISPLAY" ] || [ "$$(uname -s)" = Darwin ]; then \
		$(PY) -m napari_cnnvision.demo; \
	elif command -v xvfb-run >/dev/null 2>&1; then \
		echo "no display: running napari under Xvfb; results and a window screenshot go to demo-output/"; \
		QT_API=pyqt6 xvfb-run -a -s "-screen 0 1600x1000x24" $(PY) -m napari_cnnvision.demo --out demo-output; \
	else \
		echo "no display and no Xvfb: running the demo through the CLI into demo-output/ (numpy-rendered preview)"; \
		$(VENV)/bin/napari-cnnvision demo --out demo-output; \
	fi

benchmarks: $(STAMP) sysdeps
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) demo-output build dist src/*.egg-info .pytest_cache
