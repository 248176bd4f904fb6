# Thin wrappers around dev.py (which needs only python3).
PY ?= python3
SUBMISSIONS ?= submissions

.PHONY: setup book book-force test browser-test lab student grade strip robustness gpu-check clean

setup:        ; $(PY) dev.py setup
book:         ; $(PY) dev.py book
book-force:   ; $(PY) dev.py book --force
test:         ; $(PY) dev.py test
browser-test: ; $(PY) dev.py browser-test
lab:          ; $(PY) dev.py lab
student:      ; $(PY) dev.py student
grade:        ; $(PY) dev.py grade $(SUBMISSIONS)
strip:        ; $(PY) dev.py strip
robustness:   ; $(PY) dev.py robustness
gpu-check:    ; $(PY) dev.py gpu-check
clean:        ; rm -rf _build student solutions grades
