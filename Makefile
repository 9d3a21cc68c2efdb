# qrm pipeline stages as file targets. `make demo` is the README's first command.
CARGO ?= cargo
BIN := target/release

.PHONY: test build demo clean-demo

# The README's test command (CI runs exactly this).
test:
	$(CARGO) test --all-targets

build:
	$(CARGO) build --release --bins
