//! The embedding cache with a fake text encoder that counts its calls: memory hits, disk hits
//! with bit-identical tensors, invalidation by encoder identity, corrupt and mismatched files,
//! the byte bound and concurrent use.

use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor};
use storyreel_nn::text::cache::EmbeddingCache;
use storyreel_nn::text::{TextEmbedding, TextEncoder};

const TEXT_LEN: usize = 8;
const DIM: usize = 4;
/// Bytes one entry of the fake encoder takes in memory, short keys included.
const ENTRY: usize = TEXT_LEN * DIM * 4;

/// Embeds each word as a row derived from its bytes and the identity; EOS row; zero rows after.
struct FakeEncoder {
    identity: String,
    calls: Mutex<Vec<Vec<String>>>,
}

impl FakeEncoder {
    fn new(identity: &str) -> Self {
        Self { identity: identity.into(), calls: Mutex::new(Vec::new()) }
    }

    fn calls(&self) -> Vec<Vec<String>> {
        self.calls.lock().unwrap().clone()
    }
}

impl TextEncoder for FakeEncoder {
    fn identity(&self) -> &str {
        &self.identity
    }
    fn text_len(&self) -> usize {
        TEXT_LEN
    }
    fn dim(&self) -> usize {
        DIM
    }
    fn encode(&self, texts: &[&str]) -> storyreel_nn::Result<Vec<TextEmbedding>> {
        self.calls.lock().unwrap().push(texts.iter().map(|t| t.to_string()).collect());
        let salt = self.identity.bytes().map(f32::from).sum::<f32>();
        texts
            .iter()
            .map(|t| {
                let words: Vec<&str> = t.split_whitespace().collect();
                let truncated = words.len() + 1 > TEXT_LEN;
                let length = (words.len() + 1).min(TEXT_LEN);
                let mut data = vec![0f32; TEXT_LEN * DIM];
                for row in 0..length {
                    let seed = words.get(row).map_or(1.0, |w| w.bytes().map(f32::from).sum::<f32>());
                    for c in 0..DIM {
                        data[row * DIM + c] = ((seed + salt) * 0.37 + c as f32 * 1.3).sin() / 3.0;
                    }
                }
                Ok(TextEmbedding {
                    embeddings: Tensor::from_vec(data, (TEXT_LEN, DIM), &Device::Cpu)?,
                    length,
                    truncated,
                })
            })
            .collect()
    }
}

fn bits(t: &Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
}

fn assert_same(a: &[TextEmbedding], b: &[TextEmbedding]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert_eq!(bits(&x.embeddings), bits(&y.embeddings));
        assert_eq!(x.length, y.length);
        assert_eq!(x.truncated, y.truncated);
    }
}

#[test]
fn repeated_prompts_hit_memory_and_misses_are_batched() {
    let cache = EmbeddingCache::in_memory(1 << 20);
    let enc = FakeEncoder::new("fake-a");
    let first = cache.get_or_encode(&enc, &["a cat", "a dog", "a cat"]).unwrap();
    assert_eq!(enc.calls(), vec![vec!["a cat".to_string(), "a dog".to_string()]]);
    assert_same(&first[..1], &first[2..]);
    assert_same(&first, &enc.encode(&["a cat", "a dog", "a cat"]).unwrap());

    let second = cache.get_or_encode(&enc, &["a dog", "a cat"]).unwrap();
    assert_eq!(enc.calls().len(), 2, "only the direct encode above");
    assert_same(&second, &[first[1].clone(), first[0].clone()]);

    // A mix: one hit, one miss; only the miss is encoded.
    let third = cache.get_or_encode(&enc, &["a cat", "a bird on a wire"]).unwrap();
    assert_eq!(enc.calls().last().unwrap(), &vec!["a bird on a wire".to_string()]);
    assert_eq!(third[1].length, 6);
    let stats = cache.stats();
    assert_eq!((stats.memory_hits, stats.disk_hits, stats.misses, stats.encoder_calls), (3, 0, 3, 2));
    assert_eq!(stats.disk_writes, 0);
    assert!(cache.take_warnings().is_empty());
    assert!(cache.get_or_encode(&enc, &[]).unwrap().is_empty());
}

#[test]
fn a_fresh_cache_on_the_same_folder_hits_disk_with_identical_tensors() {
    let dir = tempfile::tempdir().unwrap();
    let texts = ["a cat", "one two three four five six seven eight nine", ""];
    let enc = FakeEncoder::new("fake-a");
    let first = EmbeddingCache::with_dir(dir.path(), 1 << 20).unwrap();
    let a = first.get_or_encode(&enc, &texts).unwrap();
    assert!(a[1].truncated && a[1].length == TEXT_LEN);
    assert_eq!(first.stats().disk_writes, 3);
    for t in texts {
        assert!(first.entry_path("fake-a", t).unwrap().is_file());
    }
    // No temporary files are left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 3);

    let enc2 = FakeEncoder::new("fake-a");
    let second = EmbeddingCache::with_dir(dir.path(), 1 << 20).unwrap();
    let b = second.get_or_encode(&enc2, &texts).unwrap();
    assert!(enc2.calls().is_empty());
    assert_eq!(second.stats().disk_hits, 3);
    assert_same(&a, &b);
    // And from memory on the next call.
    let c = second.get_or_encode(&enc2, &texts).unwrap();
    assert_eq!(second.stats().memory_hits, 3);
    assert_same(&a, &c);
    assert!(second.take_warnings().is_empty());
}

#[test]
fn a_different_encoder_identity_misses() {
    let dir = tempfile::tempdir().unwrap();
    let cache = EmbeddingCache::with_dir(dir.path(), 1 << 20).unwrap();
    let a = FakeEncoder::new("fake-a");
    let b = FakeEncoder::new("fake-b");
    let ea = cache.get_or_encode(&a, &["a cat"]).unwrap();
    let eb = cache.get_or_encode(&b, &["a cat"]).unwrap();
    assert_eq!(b.calls().len(), 1);
    assert_ne!(bits(&ea[0].embeddings), bits(&eb[0].embeddings));
    assert_ne!(cache.entry_path("fake-a", "a cat"), cache.entry_path("fake-b", "a cat"));
    // Each identity keeps its own entry, in memory and on disk.
    let fresh = EmbeddingCache::with_dir(dir.path(), 1 << 20).unwrap();
    assert_same(&fresh.get_or_encode(&a, &["a cat"]).unwrap(), &ea);
    assert_same(&fresh.get_or_encode(&b, &["a cat"]).unwrap(), &eb);
    assert_eq!((a.calls().len(), b.calls().len()), (1, 1));
}

#[test]
fn a_corrupted_file_is_a_miss_with_a_warning_and_gets_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let enc = FakeEncoder::new("fake-a");
    let want = EmbeddingCache::with_dir(dir.path(), 1 << 20).unwrap().get_or_encode(&enc, &["a cat"]).unwrap();
    let path = EmbeddingCache::with_dir(dir.path(), 0).unwrap().entry_path("fake-a", "a cat").unwrap();

    for garbage in [&b""[..], &b"not safetensors at all"[..], &std::fs::read(&path).unwrap()[..40]] {
        std::fs::write(&path, garbage).unwrap();
        let cache = EmbeddingCache::with_dir(dir.path(), 1 << 20).unwrap();
        let got = cache.get_or_encode(&enc, &["a cat"]).unwrap();
        assert_same(&got, &want);
        assert_eq!(cache.stats().misses, 1);
        let warnings = cache.take_warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains(&path.display().to_string()), "{warnings:?}");
        // Rewritten: the next fresh cache reads it without a warning.
        let again = EmbeddingCache::with_dir(dir.path(), 1 << 20).unwrap();
        assert_same(&again.get_or_encode(&enc, &["a cat"]).unwrap(), &want);
        assert_eq!(again.stats().disk_hits, 1);
        assert!(again.take_warnings().is_empty());
    }
}

#[test]
fn a_file_for_another_caption_or_shape_is_ignored_and_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let enc = FakeEncoder::new("fake-a");
    let cache = EmbeddingCache::with_dir(dir.path(), 0).unwrap();
    cache.get_or_encode(&enc, &["a cat"]).unwrap();
    // Pretend "a dog" hashed to the same file as "a cat".
    let cat = cache.entry_path("fake-a", "a cat").unwrap();
    let dog = cache.entry_path("fake-a", "a dog").unwrap();
    std::fs::copy(&cat, &dog).unwrap();
    let got = cache.get_or_encode(&enc, &["a dog"]).unwrap();
    assert_same(&got, &enc.encode(&["a dog"]).unwrap());
    let w = cache.take_warnings();
    assert!(w.len() == 1 && w[0].contains("different caption"), "{w:?}");
    assert_same(&cache.get_or_encode(&enc, &["a dog"]).unwrap(), &got);
    assert_eq!(cache.stats().disk_hits, 1);

    // An encoder of another width under the same identity: the file does not fit, so it misses.
    struct Wide(FakeEncoder);
    impl TextEncoder for Wide {
        fn identity(&self) -> &str {
            self.0.identity()
        }
        fn text_len(&self) -> usize {
            TEXT_LEN
        }
        fn dim(&self) -> usize {
            DIM * 2
        }
        fn encode(&self, texts: &[&str]) -> storyreel_nn::Result<Vec<TextEmbedding>> {
            self.0
                .encode(texts)?
                .into_iter()
                .map(|e| {
                    let embeddings = Tensor::cat(&[&e.embeddings, &e.embeddings], 1)?;
                    Ok(TextEmbedding { embeddings, ..e })
                })
                .collect()
        }
    }
    let wide = Wide(FakeEncoder::new("fake-a"));
    let got = cache.get_or_encode(&wide, &["a cat"]).unwrap();
    assert_eq!(got[0].embeddings.dims(), &[TEXT_LEN, DIM * 2]);
    assert_eq!(wide.0.calls().len(), 1);
    assert!(cache.take_warnings()[0].contains("expected"));
}

#[test]
fn memory_is_bounded_least_recently_used_first() {
    // Room for two entries (identity and text are 6 bytes each).
    let cache = EmbeddingCache::in_memory(2 * (ENTRY + 12));
    let enc = FakeEncoder::new("fake-a");
    cache.get_or_encode(&enc, &["text 1"]).unwrap();
    cache.get_or_encode(&enc, &["text 2"]).unwrap();
    cache.get_or_encode(&enc, &["text 1"]).unwrap(); // 1 is now the most recent
    cache.get_or_encode(&enc, &["text 3"]).unwrap(); // evicts 2
    assert_eq!(cache.memory_len(), 2);
    assert_eq!(cache.memory_bytes(), 2 * (ENTRY + 12));
    let calls = enc.calls().len();
    cache.get_or_encode(&enc, &["text 1", "text 3"]).unwrap();
    assert_eq!(enc.calls().len(), calls);
    cache.get_or_encode(&enc, &["text 2"]).unwrap();
    assert_eq!(enc.calls().len(), calls + 1);

    // Too small for any entry: everything is encoded each time, results still correct.
    let none = EmbeddingCache::in_memory(10);
    let a = none.get_or_encode(&enc, &["text 1"]).unwrap();
    let b = none.get_or_encode(&enc, &["text 1"]).unwrap();
    assert_same(&a, &b);
    assert_eq!(none.memory_len(), 0);
    assert_eq!(none.stats().misses, 2);
    cache.clear_memory();
    assert_eq!((cache.memory_len(), cache.memory_bytes()), (0, 0));
}

#[test]
fn concurrent_use_gives_consistent_results() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Arc::new(EmbeddingCache::with_dir(dir.path(), 1 << 20).unwrap());
    let enc = Arc::new(FakeEncoder::new("fake-a"));
    let texts: Vec<String> = (0..6).map(|i| format!("caption number {i}")).collect();
    let want = enc.encode(&texts.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let (cache, enc, texts) = (cache.clone(), enc.clone(), texts.clone());
            std::thread::spawn(move || {
                let mut order: Vec<&str> = texts.iter().map(String::as_str).collect();
                order.rotate_left(t);
                let got = cache.get_or_encode(enc.as_ref(), &order).unwrap();
                (t, got)
            })
        })
        .collect();
    for h in handles {
        let (t, got) = h.join().unwrap();
        let mut expected = want.clone();
        expected.rotate_left(t);
        assert_same(&got, &expected);
    }
    assert!(cache.take_warnings().is_empty());
    let fresh = EmbeddingCache::with_dir(dir.path(), 1 << 20).unwrap();
    let all: Vec<&str> = texts.iter().map(String::as_str).collect();
    assert_same(&fresh.get_or_encode(enc.as_ref(), &all).unwrap(), &want);
    assert_eq!(fresh.stats().disk_hits, 6);
}
