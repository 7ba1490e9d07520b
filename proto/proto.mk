# Regenerates the Go code of the provider protocol with pinned generators.
# Included from the top-level Makefile. Needs protoc from Debian's
# protobuf-compiler package (apt-get install -y protobuf-compiler).

PROTOC ?= protoc
PROTOC_VERSION := 3.21.12
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
PROTO_TOOLS := $(CURDIR)/_output/proto-tools
PROTO_GEN_GO := $(PROTO_TOOLS)/protoc-gen-go-$(PROTOC_GEN_GO_VERSION)
PROTO_GEN_GO_GRPC := $(PROTO_TOOLS)/protoc-gen-go-grpc-$(PROTOC_GEN_GO_GRPC_VERSION)
PROTO_FILES := proto/v1alpha1/service.proto

$(PROTO_GEN_GO):
	mkdir -p $(PROTO_TOOLS)/go
	GOBIN=$(PROTO_TOOLS)/go go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	mv $(PROTO_TOOLS)/go/protoc-gen-go $@

$(PROTO_GEN_GO_GRPC):
	mkdir -p $(PROTO_TOOLS)/grpc
	GOBIN=$(PROTO_TOOLS)/grpc go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	mv $(PROTO_TOOLS)/grpc/protoc-gen-go-grpc $@

# proto-gen OUT: generate into directory OUT (the module root for `make proto`).
define proto-gen
	@$(PROTOC) --version | grep -qx 'libprotoc $(PROTOC_VERSION)' || \
		{ echo "need protoc $(PROTOC_VERSION) (Debian bookworm protobuf-compiler), have: $$($(PROTOC) --version)"; exit 1; }
	$(PROTOC) -I proto \
		--plugin=protoc-gen-go=$(PROTO_GEN_GO) \
		--plugin=protoc-gen-go-grpc=$(PROTO_GEN_GO_GRPC) \
		--go_out=$(1) --go_opt=module=github.com/secretfs/secretfs \
		--go-grpc_out=$(1) --go-grpc_opt=module=github.com/secretfs/secretfs \
		$(patsubst proto/%,%,$(PROTO_FILES))
endef

.PHONY: proto verify-proto
proto: $(PROTO_GEN_GO) $(PROTO_GEN_GO_GRPC)
	$(call proto-gen,.)

# verify-proto fails when the committed generated code differs from what the
# pinned generators produce.
verify-proto: $(PROTO_GEN_GO) $(PROTO_GEN_GO_GRPC)
	rm -rf $(PROTO_TOOLS)/verify && mkdir -p $(PROTO_TOOLS)/verify
	$(call proto-gen,$(PROTO_TOOLS)/verify)
	diff -r $(PROTO_TOOLS)/verify/proto/v1alpha1 proto/v1alpha1 --exclude='*.proto' || \
		{ echo "generated code in proto/ is stale: run make proto and commit"; exit 1; }
