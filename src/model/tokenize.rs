//! Text to token ids: the checkpoint's `tokenizer.json` through the Hugging
//! Face `tokenizers` crate, or, for presets (no vocabulary), a fixed hashing
//! tokenizer: lowercase words hashed into the vocabulary between `[CLS]`
//! and `[SEP]`, so synthetic models get varied, deterministic inputs.

use std::path::Path;

use tokenizers::{Tokenizer, TruncationParams};

use super::ModelError;

/// How texts become ids.
#[derive(Clone)]
pub(crate) enum TextEncoder {
    /// A Hugging Face tokenizer (its own padding off; truncation set).
    Hf(Box<Tokenizer>),
    /// Words hashed into `vocab` ids (presets).
    Hash {
        /// Vocabulary size.
        vocab: usize,
    },
}

/// Ids of the hashing tokenizer's special tokens: BERT's where the
/// vocabulary is large enough, else the first few ids.
const PAD: u32 = 0;

fn special_ids(vocab: usize) -> (u32, u32, u32) {
    if vocab > 2000 {
        (101, 102, 1000)
    } else {
        (1, 2, 3)
    }
}

impl TextEncoder {
    /// Reads `tokenizer.json`, turning off its padding (batches pad to
    /// their own longest) and truncating at `max_len`.
    pub fn from_file(path: &Path, max_len: usize) -> Result<TextEncoder, ModelError> {
        let terr = |reason: String| ModelError::Tokenizer {
            path: path.to_path_buf(),
            reason,
        };
        let mut t = Tokenizer::from_file(path).map_err(|e| terr(e.to_string()))?;
        t.with_padding(None);
        t.with_truncation(Some(TruncationParams {
            max_length: max_len,
            ..Default::default()
        }))
        .map_err(|e| terr(e.to_string()))?;
        Ok(TextEncoder::Hf(Box::new(t)))
    }

    /// The pad id.
    pub fn pad_id(&self) -> u32 {
        match self {
            TextEncoder::Hf(t) => t
                .get_padding()
                .map(|p| p.pad_id)
                .or_else(|| t.token_to_id("[PAD]"))
                .unwrap_or(PAD),
            TextEncoder::Hash { .. } => PAD,
        }
    }

    /// Ids of every text, each at most `max_len` long (special tokens
    /// included).
    pub fn encode(&self, texts: &[&str], max_len: usize) -> Result<Vec<Vec<u32>>, ModelError> {
        match self {
            TextEncoder::Hf(t) => {
                let enc = t
                    .encode_batch(texts.to_vec(), true)
                    .map_err(|e| ModelError::Input(format!("tokenizer failed: {e}")))?;
                Ok(enc
                    .into_iter()
                    .map(|e| {
                        let mut ids = e.get_ids().to_vec();
                        ids.truncate(max_len);
                        ids
                    })
                    .collect())
            }
            TextEncoder::Hash { vocab } => {
                let (cls, sep, first) = special_ids(*vocab);
                let span = (*vocab as u32).saturating_sub(first).max(1);
                Ok(texts
                    .iter()
                    .map(|text| {
                        let mut ids = vec![cls];
                        for w in text
                            .split(|c: char| !c.is_alphanumeric())
                            .filter(|w| !w.is_empty())
                        {
                            if ids.len() + 1 >= max_len {
                                break;
                            }
                            let h = fnv1a(&w.to_lowercase());
                            ids.push(first + (h % span as u64) as u32);
                        }
                        ids.push(sep);
                        ids.truncate(max_len.max(1));
                        ids
                    })
                    .collect())
            }
        }
    }

    /// Saves a Hugging Face tokenizer (nothing for the hashing one).
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        if let TextEncoder::Hf(t) = self {
            let s = t.to_string(true).map_err(|e| ModelError::Tokenizer {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
            crate::io::write_atomic(path, s.as_bytes())?;
        }
        Ok(())
    }
}

/// 64-bit FNV-1a: a stable hash (std's is randomized per process).
fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A few dozen varied English sentences: the default evaluation inputs.
pub(crate) const SENTENCES: &[&str] = &[
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the street corner.",
    "The new movie is awesome and everyone loved it.",
    "How do I reset my password if I forgot my email address?",
    "Quantization reduces the memory needed to store neural network weights.",
    "The cat sat quietly on the warm windowsill all afternoon.",
    "Stock markets fell sharply after the central bank raised interest rates.",
    "She baked a chocolate cake for her grandmother's ninetieth birthday.",
    "Is it going to rain in Paris tomorrow morning?",
    "The train to Berlin was delayed by forty minutes because of snow.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "I can't believe how expensive coffee has become this year!",
    "The committee will review the proposal at next Tuesday's meeting.",
    "Two children are building a sandcastle at the beach.",
    "Graphics processors execute thousands of threads in parallel.",
    "My laptop battery drains quickly when I watch videos.",
    "The museum displays paintings from the Renaissance period.",
    "Please remember to water the tomatoes while I am away.",
    "A violinist performed Bach's partita to a silent audience.",
    "Heavy traffic is expected on the highway during the holiday weekend.",
    "The recipe calls for two cups of flour and a pinch of salt.",
    "Scientists discovered a new species of frog in the rainforest.",
    "What is the fastest way to learn a foreign language?",
    "The football match ended in a draw after extra time.",
    "He repaired the old bicycle with parts from a scrapyard.",
    "Cloud storage makes it easy to share files with colleagues.",
    "The volcano erupted, sending ash high into the atmosphere.",
    "A dog is running through a field of tall grass.",
    "Our flight was cancelled, so we spent the night at the airport.",
    "Regular exercise improves both physical and mental health.",
    "The library is closed on Sundays and public holidays.",
    "This sentence is deliberately short.",
];

/// Different sentences for calibration (GPTQ / AWQ), kept apart from
/// [`SENTENCES`] so fidelity is measured on inputs the quantizer never saw.
pub(crate) const CALIBRATION_SENTENCES: &[&str] = &[
    "The orchestra rehearsed the symphony late into the evening.",
    "Engineers tested the bridge with heavy trucks before it opened.",
    "Where can I find a good pharmacy near the central station?",
    "The farmer harvested wheat before the storm arrived.",
    "Machine translation has improved a lot over the past decade.",
    "A woman is slicing vegetables in a busy restaurant kitchen.",
    "The senator announced her retirement after thirty years in office.",
    "Kids love playing in the snow during the winter holidays.",
    "The database query returned millions of rows in under a second.",
    "He forgot his umbrella and got soaked on the way home.",
    "Astronomers observed a distant galaxy through the new telescope.",
    "The bakery on the corner sells the best croissants in town.",
    "Can you recommend a book about the history of mathematics?",
    "The hikers reached the summit just as the sun rose.",
    "Electric cars are becoming cheaper to buy and to run.",
    "The teacher explained fractions with slices of pizza.",
    "A sudden power cut left the whole neighbourhood in darkness.",
    "The company reported record profits for the third quarter.",
    "Birds migrate south when the days grow shorter.",
    "I would like to book a table for four at eight o'clock.",
    "The detective examined the footprints near the broken window.",
    "Compilers translate source code into machine instructions.",
    "The river flooded the valley after weeks of heavy rain.",
    "A group of friends is sharing a meal on a sunny terrace.",
    "The marathon runners crossed the finish line exhausted but happy.",
    "Our internet connection drops every evening around nine.",
    "The ancient temple was carved out of solid rock.",
    "She practised the piano for hours before the competition.",
    "Vaccines train the immune system to recognise a virus.",
    "The ferry crosses the strait twice a day in summer.",
    "Recycling paper saves trees, water and energy.",
    "Nobody expected the underdog team to win the championship.",
    "The gardener pruned the roses and planted new tulip bulbs.",
    "Interest in chess grew after the television series aired.",
    "The printer jammed again in the middle of the report.",
    "Wind turbines generate electricity on the coastal hills.",
    "The toddler stacked the wooden blocks into a tall tower.",
    "Customs officers inspected the container at the harbour.",
    "The lecture on quantum mechanics was surprisingly clear.",
    "A thunderstorm is approaching from the west tonight.",
    "The chef seasoned the soup with fresh herbs and pepper.",
    "Satellites relay television signals across continents.",
    "The old lighthouse still guides ships along the rocky shore.",
    "Please send me the invoice by the end of the week.",
    "The zebra crossing near the school was repainted yesterday.",
    "Volunteers cleaned the park after the summer festival.",
    "The algorithm sorts the list in logarithmic time per element.",
    "They adopted a puppy from the animal shelter last spring.",
];
