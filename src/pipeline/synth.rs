//! The embedded default task: multi-step arithmetic word problems with step-by-step solutions,
//! some of which go wrong at a known step.
//!
//! Everything is procedural and deterministic by seed, so the whole chain runs with nothing
//! downloaded but a model. Each question draws from its own ChaCha8 stream (keyed by the seed
//! and the setting, stream = question index), and each sample from a stream of its own, so
//! `questions: N` gives a prefix of `questions: M > N` and `samples: 4` a prefix of `samples: 8`.
//!
//! A wrong sample carries one injected mistake — wrong arithmetic, a wrong operand, a
//! misread number, or a skipped or repeated step (at equal rates, so wrong solutions are not
//! shorter on average) — and every later step follows from it correctly, as a real wrong
//! trajectory would. Wrong trajectories stay in the range right ones live in (positive, under
//! the setting's limit, exact divisions), and misread numbers in their slot's range. Wrong and right samples share the templates, the phrasing
//! distribution and the final-answer sentence (`The answer is 42.`), so only re-doing the
//! arithmetic tells them apart. `first_error_char` is the char offset of the first line whose
//! stated value differs from the reference solution (or whose arithmetic is wrong).
//!
//! Two more kinds sit mid-solution and are found by comparing spans rather than by redoing
//! arithmetic (`--mistakes copy|carry|span`): a number copied wrongly from the question, and a
//! result carried wrongly into a later computation. Every computation stays right given its
//! operands, so the mistake is the mismatch between two spans, carried on to a wrong answer.
//!
//! Wrong samples of one question often share a mistake (each question keeps a small pool of
//! "common" mistakes), so wrong answers cluster as they do for sampled LMs and majority voting
//! has something to beat. The per-question error rate varies around the configured mean
//! (`u^((1 - r) / r)` for `u ~ U(0, 1)` has mean `r`), so some questions are mostly right and
//! some mostly wrong.
//!
//! Settings mirror the paper's ID/OOD split: `synth-id` has 2–3 operations on small numbers;
//! `synth-ood` has 4–6 operations on larger numbers with other subjects, items, verbs and
//! question and solution phrasings.

use polars::prelude::DataFrame;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::pipeline::schema::{generations_frame, Generation};

/// Which settings to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Split {
    /// In-distribution only (`synth-id`).
    Id,
    /// Out-of-distribution only (`synth-ood`).
    Ood,
    /// Both: the first half (rounded up) of the questions in-distribution, the rest OOD.
    Both,
}

/// One of the two problem distributions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// 2–3 operations, small numbers, the training templates.
    InDistribution,
    /// 4–6 operations, larger numbers, new subjects, verbs and phrasings.
    OutOfDistribution,
}

impl Setting {
    /// The `benchmark` column value.
    pub fn benchmark(self) -> &'static str {
        match self {
            Setting::InDistribution => "synth-id",
            Setting::OutOfDistribution => "synth-ood",
        }
    }

    fn key_byte(self) -> u8 {
        match self {
            Setting::InDistribution => 1,
            Setting::OutOfDistribution => 2,
        }
    }

    fn ranges(self) -> &'static Ranges {
        match self {
            Setting::InDistribution => &ID_RANGES,
            Setting::OutOfDistribution => &OOD_RANGES,
        }
    }
}

/// Which mistakes wrong samples carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Mistakes {
    /// Realistic slips at equal rates: off-by-a-little arithmetic, a wrong operand, a misread
    /// number, a skipped or repeated step. Finding them means redoing the arithmetic.
    #[default]
    Subtle,
    /// Arithmetic only, with a result far from the true one (doubled, halved, or 15–40 away, in
    /// range): the kind a small language model notices as it reads (sized for the demo's
    /// 135M model, which barely notices subtle slips).
    Obvious,
    /// The work is right but the last line states another answer (doubled, halved, or 15–40
    /// away from the result just computed): found by comparing two lines, not by redoing any
    /// arithmetic, so a reward model reading its final token can learn it from few pairs.
    Answer,
    /// A number copied wrongly from the question (a neighbouring or look-alike digit, swapped
    /// digits, ten off; never a number the question states) and used throughout: found by
    /// comparing the solution's number with the question's, mid-solution.
    Copy,
    /// A result carried wrongly into a later computation (the running total, or a group total
    /// within its line, written with a neighbouring or look-alike digit, swapped digits, or ten
    /// off): found by comparing two spans of the solution, mid-solution.
    Carry,
    /// `copy` and `carry` at equal rates: every mistake is found by comparing two spans, none
    /// by redoing arithmetic, and each sits mid-solution with the rest consistent with it.
    Span,
}

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthConfig {
    /// Number of questions (over both settings for [`Split::Both`]).
    pub questions: usize,
    /// Samples (responses) per question.
    pub samples: usize,
    /// Mean share of wrong samples, in [0, 1].
    pub error_rate: f64,
    /// Which settings.
    pub split: Split,
    /// Seed of every random stream.
    pub seed: u64,
    /// Which mistakes wrong samples carry.
    pub mistakes: Mistakes,
    /// Whether each sample draws its own phrasing or a question's samples share one.
    pub phrasing: Phrasing,
}

/// How solutions are phrased.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Phrasing {
    /// Each sample draws its own phrasing of every line, as sampled LMs vary theirs.
    #[default]
    Sample,
    /// A question's samples share one phrasing, so a wrong sample differs from a right one only
    /// in its numbers (from the mistake on): minimal pairs, which teach a reward model where
    /// the mistake is rather than which phrasing came with it.
    Question,
    /// As `question`, and every line first restates the question's sentence for its step, with
    /// the numbers the solution uses, before computing ("He gets another 6 marbles, so he has
    /// 14 + 6 = 20 marbles."), as solvers that quote the question do. A number copied wrongly
    /// then stands in the question's own words, where a language model's copying expects the
    /// question's number: the one phrasing in which SmolLM2-135M itself notices a `copy`
    /// mistake (reports/learning).
    Restate,
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            questions: 1000,
            samples: 8,
            error_rate: 0.5,
            split: Split::Both,
            seed: 0,
            mistakes: Mistakes::Subtle,
            phrasing: Phrasing::Sample,
        }
    }
}

impl SynthConfig {
    /// Rejects settings the generator cannot honour.
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(Error::Usage(format!(
                "--error-rate must be in [0, 1], got {}",
                self.error_rate
            )));
        }
        if self.samples == 0 || self.samples > MAX_SAMPLES {
            return Err(Error::Usage(format!(
                "--samples must be in 1..={MAX_SAMPLES}, got {}",
                self.samples
            )));
        }
        Ok(())
    }

    /// The (setting, question count) blocks this config generates, in output order.
    pub fn blocks(&self) -> Vec<(Setting, usize)> {
        match self.split {
            Split::Id => vec![(Setting::InDistribution, self.questions)],
            Split::Ood => vec![(Setting::OutOfDistribution, self.questions)],
            Split::Both => vec![
                (Setting::InDistribution, self.questions.div_ceil(2)),
                (Setting::OutOfDistribution, self.questions / 2),
            ],
        }
    }
}

/// Sample streams are numbered below 2^16 inside a question's stream block.
const MAX_SAMPLES: usize = (1 << 16) - 2;

/// The stream a question's shared phrasing draws from ([`Phrasing::Question`]): past every
/// sample's.
const PHRASING_STREAM: usize = (1 << 16) - 1;

/// Generates the generations table rows: questions in order, samples `s0..` within each.
pub fn generate(config: &SynthConfig) -> Result<Vec<Generation>> {
    config.validate()?;
    let mut rows = Vec::with_capacity(config.questions * config.samples);
    for (setting, questions) in config.blocks() {
        let blocks: Vec<Vec<Generation>> = (0..questions)
            .into_par_iter()
            .map(|index| question_rows(config, setting, index))
            .collect();
        rows.extend(blocks.into_iter().flatten());
    }
    Ok(rows)
}

/// [`generate`] as a canonical generations frame.
pub fn generate_frame(config: &SynthConfig) -> Result<DataFrame> {
    generations_frame(&generate(config)?)
}

// ---------------------------------------------------------------- numbers and vocabulary

struct Ranges {
    operations: (usize, usize),
    start: (i64, i64),
    amount: (i64, i64),
    groups: (i64, i64),
    each: (i64, i64),
    factor: (i64, i64),
    parts: (i64, i64),
    price: (i64, i64),
    /// Largest value any trajectory, right or wrong, may reach.
    limit: i64,
}

const ID_RANGES: Ranges = Ranges {
    operations: (2, 3),
    start: (6, 60),
    amount: (2, 25),
    groups: (2, 6),
    each: (2, 12),
    factor: (2, 3),
    parts: (2, 8),
    price: (2, 9),
    limit: 999,
};

const OOD_RANGES: Ranges = Ranges {
    operations: (4, 6),
    start: (120, 950),
    amount: (15, 400),
    groups: (3, 24),
    each: (6, 48),
    factor: (2, 5),
    parts: (3, 15),
    price: (4, 35),
    limit: 99_999,
};

/// (name, pronoun) for ID problems.
const PEOPLE: &[(&str, &str)] = &[
    ("Lena", "she"),
    ("Omar", "he"),
    ("Maya", "she"),
    ("Theo", "he"),
    ("Priya", "she"),
    ("Jonas", "he"),
    ("Keiko", "she"),
    ("Diego", "he"),
    ("Amara", "she"),
    ("Felix", "he"),
    ("Nora", "she"),
    ("Samir", "he"),
    ("Ines", "she"),
    ("Liam", "he"),
    ("Zoe", "she"),
    ("Kofi", "he"),
];

/// Subjects of OOD problems (pronoun "it").
const PLACES: &[&str] = &[
    "the warehouse",
    "the farm",
    "the factory",
    "the school",
    "the corner shop",
    "the depot",
    "the bakery",
    "the library",
];

/// (item, items, container, containers)
type Item = (&'static str, &'static str, &'static str, &'static str);

const ID_ITEMS: &[Item] = &[
    ("apple", "apples", "bag", "bags"),
    ("marble", "marbles", "jar", "jars"),
    ("sticker", "stickers", "sheet", "sheets"),
    ("card", "cards", "pack", "packs"),
    ("cookie", "cookies", "box", "boxes"),
    ("pencil", "pencils", "box", "boxes"),
    ("shell", "shells", "bucket", "buckets"),
    ("bead", "beads", "bag", "bags"),
];

const OOD_ITEMS: &[Item] = &[
    ("bolt", "bolts", "crate", "crates"),
    ("brick", "bricks", "pallet", "pallets"),
    ("bottle", "bottles", "case", "cases"),
    ("egg", "eggs", "carton", "cartons"),
    ("notebook", "notebooks", "carton", "cartons"),
    ("seedling", "seedlings", "tray", "trays"),
    ("can", "cans", "pallet", "pallets"),
    ("towel", "towels", "stack", "stacks"),
];

/// (third person, gerund)
type Verb = (&'static str, &'static str);

const ID_GAIN: &[Verb] = &[
    ("buys", "buying"),
    ("finds", "finding"),
    ("gets", "getting"),
    ("wins", "winning"),
];
const ID_LOSE: &[Verb] = &[
    ("gives away", "giving away"),
    ("loses", "losing"),
    ("uses", "using"),
    ("sells", "selling"),
];
const OOD_GAIN: &[Verb] = &[
    ("receives", "receiving"),
    ("produces", "producing"),
    ("orders", "ordering"),
    ("collects", "collecting"),
];
const OOD_LOSE: &[Verb] = &[
    ("ships", "shipping"),
    ("sells", "selling"),
    ("donates", "donating"),
    ("throws out", "throwing out"),
];

const OOD_CONNECTORS: &[&str] = &["First", "Next", "After that", "Later", "Then", "Finally"];

fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

// ---------------------------------------------------------------- problems

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// x + amount
    Gain,
    /// x - amount
    Lose,
    /// x + groups * each
    GainGroups,
    /// x - groups * each
    LoseGroups,
    /// x * factor
    Scale,
    /// x / parts (final operation only)
    Share,
    /// x * price (final operation only)
    Price,
}

#[derive(Debug, Clone)]
struct Operation {
    kind: Kind,
    /// amount, (groups, each), factor, parts or price; unused slots are 0.
    numbers: [i64; 2],
    verb: Verb,
}

/// Where a number of the question sits: the start value or an operation's slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Start,
    Operation(usize, usize),
}

#[derive(Debug, Clone)]
struct Problem {
    setting: Setting,
    /// "Lena" or "the warehouse".
    subject: &'static str,
    /// "she", "he" or "it".
    pronoun: &'static str,
    item: Item,
    start: i64,
    operations: Vec<Operation>,
    question: String,
    /// The question's statements without what it asks: the start value's, then one per
    /// operation ([`Phrasing::Restate`] quotes them).
    statements: Vec<String>,
}

impl Problem {
    fn draw(setting: Setting, rng: &mut ChaCha8Rng) -> Problem {
        let ranges = setting.ranges();
        let (subject, pronoun) = match setting {
            Setting::InDistribution => *PEOPLE.choose(rng).unwrap_or(&PEOPLE[0]),
            Setting::OutOfDistribution => (*PLACES.choose(rng).unwrap_or(&PLACES[0]), "it"),
        };
        let (items, gain, lose) = match setting {
            Setting::InDistribution => (ID_ITEMS, ID_GAIN, ID_LOSE),
            Setting::OutOfDistribution => (OOD_ITEMS, OOD_GAIN, OOD_LOSE),
        };
        let item = *items.choose(rng).unwrap_or(&items[0]);
        let count = rng.random_range(ranges.operations.0..=ranges.operations.1);
        let start = rng.random_range(ranges.start.0..=ranges.start.1);
        let mut value = start;
        let mut operations = Vec::with_capacity(count);
        while operations.len() < count {
            let last = operations.len() + 1 == count;
            let kind = *[
                Kind::Gain,
                Kind::Lose,
                Kind::GainGroups,
                Kind::LoseGroups,
                Kind::Scale,
                Kind::Share,
                Kind::Price,
            ]
            .choose(rng)
            .unwrap_or(&Kind::Gain);
            let draw =
                |rng: &mut ChaCha8Rng, range: (i64, i64)| rng.random_range(range.0..=range.1);
            let (numbers, next) = match kind {
                Kind::Gain => {
                    let amount = draw(rng, ranges.amount);
                    ([amount, 0], value + amount)
                }
                Kind::Lose => {
                    let amount = draw(rng, ranges.amount);
                    ([amount, 0], value - amount)
                }
                Kind::GainGroups | Kind::LoseGroups => {
                    let groups = draw(rng, ranges.groups);
                    let each = draw(rng, ranges.each);
                    let total = groups * each;
                    let next = if kind == Kind::GainGroups {
                        value + total
                    } else {
                        value - total
                    };
                    ([groups, each], next)
                }
                Kind::Scale => {
                    // Rare: it grows numbers fast.
                    if rng.random_bool(0.6) {
                        continue;
                    }
                    let factor = draw(rng, ranges.factor);
                    ([factor, 0], value * factor)
                }
                Kind::Share => {
                    if !last || rng.random_bool(0.4) {
                        continue;
                    }
                    let divisors: Vec<i64> = (ranges.parts.0..=ranges.parts.1)
                        .filter(|parts| value % parts == 0)
                        .collect();
                    match divisors.choose(rng) {
                        Some(&parts) => ([parts, 0], value / parts),
                        None => continue,
                    }
                }
                Kind::Price => {
                    if !last || rng.random_bool(0.6) {
                        continue;
                    }
                    let price = draw(rng, ranges.price);
                    ([price, 0], value * price)
                }
            };
            if next <= 0 || next > ranges.limit {
                continue;
            }
            let verbs = match kind {
                Kind::Lose | Kind::LoseGroups => lose,
                _ => gain,
            };
            let verb = *verbs.choose(rng).unwrap_or(&verbs[0]);
            operations.push(Operation {
                kind,
                numbers,
                verb,
            });
            value = next;
        }
        let mut problem = Problem {
            setting,
            subject,
            pronoun,
            item,
            start,
            operations,
            question: String::new(),
            statements: Vec::new(),
        };
        (problem.question, problem.statements) = problem.question_text(rng);
        problem
    }

    fn slots(&self) -> Vec<(Slot, i64)> {
        let mut slots = vec![(Slot::Start, self.start)];
        for (index, operation) in self.operations.iter().enumerate() {
            let used = match operation.kind {
                Kind::GainGroups | Kind::LoseGroups => 2,
                _ => 1,
            };
            for position in 0..used {
                slots.push((
                    Slot::Operation(index, position),
                    operation.numbers[position],
                ));
            }
        }
        slots
    }

    /// The range the question's number at `slot` was drawn from.
    fn range(&self, slot: Slot) -> (i64, i64) {
        let ranges = self.setting.ranges();
        let Slot::Operation(index, position) = slot else {
            return ranges.start;
        };
        match (self.operations[index].kind, position) {
            (Kind::Gain | Kind::Lose, _) => ranges.amount,
            (Kind::GainGroups | Kind::LoseGroups, 0) => ranges.groups,
            (Kind::GainGroups | Kind::LoseGroups, _) => ranges.each,
            (Kind::Scale, _) => ranges.factor,
            (Kind::Share, _) => ranges.parts,
            (Kind::Price, _) => ranges.price,
        }
    }

    /// The question, and its statements (see [`Problem::statements`]).
    fn question_text(&self, rng: &mut ChaCha8Rng) -> (String, Vec<String>) {
        let (item, items, container, containers) = self.item;
        let subject = self.subject;
        let subject_cap = capitalize(subject);
        let pronoun = self.pronoun;
        let pronoun_cap = capitalize(pronoun);
        let start = self.start;
        let ood = self.setting == Setting::OutOfDistribution;
        let mut sentences = Vec::with_capacity(self.operations.len() + 2);
        sentences.push(match (ood, rng.random_range(0..3)) {
            (false, 0) => format!("{subject_cap} has {start} {items}."),
            (false, 1) => format!("{subject_cap} starts the day with {start} {items}."),
            (false, _) => format!("{subject_cap} has a collection of {start} {items}."),
            (true, 0) => format!("{subject_cap} has {start} {items} in stock."),
            (true, 1) => format!("{subject_cap} begins the month with {start} {items}."),
            (true, _) => format!("At the start of the week, {subject} holds {start} {items}."),
        });
        let mut asked = None;
        for (position, operation) in self.operations.iter().enumerate() {
            let [a, b] = operation.numbers;
            let verb = operation.verb.0;
            let variant = rng.random_range(0..2);
            let sentence = if ood {
                let connector = OOD_CONNECTORS[position.min(OOD_CONNECTORS.len() - 1)];
                match (operation.kind, variant) {
                    (Kind::Gain, 0) => format!("{connector}, it {verb} {a} more {items}."),
                    (Kind::Gain, _) => format!("{connector}, it {verb} another {a} {items}."),
                    (Kind::Lose, 0) => format!("{connector}, it {verb} {a} {items}."),
                    (Kind::Lose, _) => format!("{connector}, it {verb} {a} of its {items}."),
                    (Kind::GainGroups, 0) | (Kind::LoseGroups, 0) => {
                        format!("{connector}, it {verb} {a} {containers} holding {b} {items} each.")
                    }
                    (Kind::GainGroups, _) | (Kind::LoseGroups, _) => {
                        format!("{connector}, it {verb} {a} full {containers} of {b} {items}.")
                    }
                    (Kind::Scale, _) => format!(
                        "{connector}, its number of {items} grows to {a} times what it was."
                    ),
                    (Kind::Share, _) => {
                        asked = Some(format!("How many {items} go in each {container}?"));
                        format!(
                            "{connector}, all the {items} are packed equally into {a} \
                             {containers}."
                        )
                    }
                    (Kind::Price, _) => {
                        asked = Some("How many dollars does it earn?".to_owned());
                        format!("{connector}, it sells every {item} for {a} dollars.")
                    }
                }
            } else {
                let then = if position == 0 { "" } else { "Then " };
                let who = if position == 0 {
                    pronoun_cap.clone()
                } else {
                    pronoun.to_owned()
                };
                match (operation.kind, variant) {
                    (Kind::Gain, 0) => format!("{then}{who} {verb} {a} more {items}."),
                    (Kind::Gain, _) => format!("{then}{who} {verb} another {a} {items}."),
                    (Kind::Lose, 0) => format!("{then}{who} {verb} {a} {items}."),
                    (Kind::Lose, _) => format!("{then}{who} {verb} {a} of them."),
                    (Kind::GainGroups, 0) | (Kind::LoseGroups, 0) => {
                        format!("{then}{who} {verb} {a} {containers} with {b} {items} in each.")
                    }
                    (Kind::GainGroups, _) | (Kind::LoseGroups, _) => {
                        format!("{then}{who} {verb} {a} {containers} of {b} {items} each.")
                    }
                    (Kind::Scale, _) => {
                        let grows = if a == 2 { "doubles" } else { "triples" };
                        format!("{then}the number of {items} {pronoun} has {grows}.")
                    }
                    (Kind::Share, _) => {
                        asked = Some(format!("How many {items} are in each {container}?"));
                        format!("{then}{who} puts all the {items} equally into {a} {containers}.")
                    }
                    (Kind::Price, _) => {
                        asked = Some(format!("How many dollars does {pronoun} get?"));
                        format!("{then}{who} sells all of them for {a} dollars each.")
                    }
                }
            };
            sentences.push(capitalize(&sentence));
        }
        let statements = sentences.clone();
        if let Some(asked) = asked {
            sentences.push(asked);
        } else {
            sentences.push(match (ood, rng.random_range(0..3)) {
                (false, 0) => format!("How many {items} does {subject} have now?"),
                (false, 1) => format!("How many {items} does {subject} have in the end?"),
                (false, _) => format!("How many {items} does {subject} end up with?"),
                (true, 0) => format!("How many {items} does {subject} have at the end?"),
                (true, 1) => format!("What is the final number of {items} at {subject}?"),
                (true, _) => format!("How many {items} are at {subject} in the end?"),
            });
        }
        (sentences.join(" "), statements)
    }
}

// ---------------------------------------------------------------- solving, with or without a mistake

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sign {
    Plus,
    Minus,
    Times,
    Over,
}

impl Sign {
    fn symbol(self) -> char {
        match self {
            Sign::Plus => '+',
            Sign::Minus => '-',
            Sign::Times => '*',
            Sign::Over => '/',
        }
    }

    /// The exact result, or `None` on overflow or a division with remainder.
    fn apply(self, left: i64, right: i64) -> Option<i64> {
        match self {
            Sign::Plus => left.checked_add(right),
            Sign::Minus => left.checked_sub(right),
            Sign::Times => left.checked_mul(right),
            Sign::Over if right != 0 && left % right == 0 => Some(left / right),
            Sign::Over => None,
        }
    }
}

/// One `left sign right = result` written in a solution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Computation {
    left: i64,
    sign: Sign,
    right: i64,
    result: i64,
}

impl std::fmt::Display for Computation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Computation {
            left,
            sign,
            right,
            result,
        } = self;
        write!(f, "{left} {} {right} = {result}", sign.symbol())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Left,
    Right,
}

/// The one error injected into a wrong sample; everything after it follows correctly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mistake {
    /// Computation `position` of operation `operation` writes `result` instead of the true one.
    Arithmetic {
        operation: usize,
        position: usize,
        result: i64,
    },
    /// Computation `position` of operation `operation` uses `value` as its `side` operand.
    Operand {
        operation: usize,
        position: usize,
        side: Side,
        value: i64,
    },
    /// Operation `operation` is left out.
    Skip { operation: usize },
    /// Operation `operation` is applied twice (double counting).
    Repeat { operation: usize },
    /// The question's number at `slot` is read as `value` throughout.
    Misread { slot: Slot, value: i64 },
    /// Every computation is right, but the final answer is stated as `value`.
    Answer { value: i64 },
}

/// The computations of one operation (one or two).
#[derive(Debug, Clone)]
struct Step {
    operation: usize,
    computations: Vec<Computation>,
}

#[derive(Debug, Clone)]
struct Solution {
    /// The start value as the solver read it.
    start: i64,
    steps: Vec<Step>,
    answer: i64,
}

impl Solution {
    fn computations(&self) -> impl Iterator<Item = &Computation> {
        self.steps.iter().flat_map(|step| step.computations.iter())
    }
}

/// Works the problem, injecting `mistake`; `None` when the trajectory leaves the plausible
/// range (a value ≤ 0 or over the setting's limit, a division with remainder), so wrong
/// numbers are distributed like right ones.
fn solve(problem: &Problem, mistake: Option<Mistake>) -> Option<Solution> {
    let limit = problem.setting.ranges().limit;
    let read = |slot: Slot, value: i64| match mistake {
        Some(Mistake::Misread {
            slot: misread,
            value,
        }) if misread == slot => value,
        _ => value,
    };
    let start = read(Slot::Start, problem.start);
    let mut value = start;
    let mut steps = Vec::with_capacity(problem.operations.len());
    for (index, operation) in problem.operations.iter().enumerate() {
        let times = match mistake {
            Some(Mistake::Skip { operation }) if operation == index => 0,
            Some(Mistake::Repeat { operation }) if operation == index => 2,
            _ => 1,
        };
        let a = read(Slot::Operation(index, 0), operation.numbers[0]);
        let b = read(Slot::Operation(index, 1), operation.numbers[1]);
        for _ in 0..times {
            let mut computations = Vec::with_capacity(2);
            let mut compute = |position: usize, left: i64, sign: Sign, right: i64| -> Option<i64> {
                let (left, right) = match mistake {
                    Some(Mistake::Operand {
                        operation,
                        position: at,
                        side,
                        value,
                    }) if operation == index && at == position => match side {
                        Side::Left => (value, right),
                        Side::Right => (left, value),
                    },
                    _ => (left, right),
                };
                let exact = sign.apply(left, right)?;
                let result = match mistake {
                    Some(Mistake::Arithmetic {
                        operation,
                        position: at,
                        result,
                    }) if operation == index && at == position => result,
                    _ => exact,
                };
                if result <= 0 || result > limit {
                    return None;
                }
                computations.push(Computation {
                    left,
                    sign,
                    right,
                    result,
                });
                Some(result)
            };
            value = match operation.kind {
                Kind::Gain => compute(0, value, Sign::Plus, a)?,
                Kind::Lose => compute(0, value, Sign::Minus, a)?,
                Kind::GainGroups => {
                    let total = compute(0, a, Sign::Times, b)?;
                    compute(1, value, Sign::Plus, total)?
                }
                Kind::LoseGroups => {
                    let total = compute(0, a, Sign::Times, b)?;
                    compute(1, value, Sign::Minus, total)?
                }
                Kind::Scale | Kind::Price => compute(0, value, Sign::Times, a)?,
                Kind::Share => compute(0, value, Sign::Over, a)?,
            };
            steps.push(Step {
                operation: index,
                computations,
            });
        }
    }
    let answer = match mistake {
        Some(Mistake::Answer { value: stated }) => stated,
        _ => value,
    };
    if answer <= 0 || answer > limit {
        return None;
    }
    Some(Solution {
        start,
        steps,
        answer,
    })
}

/// A plausible wrong result for a computation: off by one or two, a lost carry, swapped
/// digits, one group too many or too few.
fn corrupt_result(computation: &Computation, setting: Setting, rng: &mut ChaCha8Rng) -> i64 {
    let Computation {
        left,
        sign,
        right,
        result,
    } = *computation;
    let mut options = vec![result + 1, result - 1, result + 10, result - 10];
    if let Some(swapped) = swap_last_digits(result) {
        options.push(swapped);
    }
    match sign {
        Sign::Plus if left % 10 + right % 10 >= 10 => options.push(result - 10),
        Sign::Minus if left % 10 < right % 10 => options.push(result + 10),
        Sign::Times => options.extend([result + left, result - left, result + right]),
        _ => options.push(result + 2),
    }
    if setting == Setting::OutOfDistribution {
        options.extend([result + 100, result - 100, result + 20]);
    }
    options.retain(|&option| option > 0 && option != result);
    *options.choose(rng).unwrap_or(&(result + 1))
}

/// A plausible misreading of a number: swapped digits, a neighbouring or look-alike digit,
/// kept inside `range` (where the question's numbers of that kind are drawn), so misread
/// numbers are distributed like real ones. `None` when no misreading stays in range.
fn corrupt_number(number: i64, range: (i64, i64), rng: &mut ChaCha8Rng) -> Option<i64> {
    let mut options = vec![number + 1, number - 1];
    if let Some(swapped) = swap_last_digits(number) {
        options.push(swapped);
    }
    if number >= 10 {
        options.extend([number + 10, number - 10]);
    }
    let digits = number.to_string();
    for (index, digit) in digits.char_indices() {
        let lookalike = match digit {
            '1' => '7',
            '7' => '1',
            '3' => '8',
            '8' => '3',
            '6' => '9',
            '9' => '6',
            '5' => '6',
            _ => continue,
        };
        let mut changed = digits.clone();
        changed.replace_range(index..index + 1, &lookalike.to_string());
        if let Ok(value) = changed.parse() {
            options.push(value);
        }
    }
    options.retain(|&option| (range.0..=range.1).contains(&option) && option != number);
    options.choose(rng).copied()
}

fn swap_last_digits(number: i64) -> Option<i64> {
    let ones = number % 10;
    let tens = number / 10 % 10;
    (number >= 10 && ones != tens && !(ones == 0 && number < 100))
        .then(|| number - ones - 10 * tens + 10 * ones + tens)
}

/// Draws a mistake that changes the final answer and keeps the trajectory plausible.
/// A result far from the true one, in (0, `limit`]: doubled, halved, or 15–40 away.
fn obvious_result(computation: &Computation, limit: i64, rng: &mut ChaCha8Rng) -> Option<i64> {
    let result = computation.result;
    let distance = rng.random_range(15..=40);
    let mut options = vec![result * 2, result / 2, result + distance, result - distance];
    options.retain(|&option| option > 0 && option <= limit && (option - result).abs() >= 5);
    options.choose(rng).copied()
}

/// A number of the question copied wrongly ([`corrupt_number`], in its slot's range) and
/// used throughout; the copy is never a number the question states, so comparing the two
/// spans finds it.
fn copy_mistake(problem: &Problem, slots: &[(Slot, i64)], rng: &mut ChaCha8Rng) -> Option<Mistake> {
    let &(slot, value) = slots.choose(rng)?;
    let copied = corrupt_number(value, problem.range(slot), rng)?;
    if slots.iter().any(|&(_, stated)| stated == copied) {
        return None;
    }
    Some(Mistake::Misread {
        slot,
        value: copied,
    })
}

/// A result carried wrongly ([`corrupt_number`] of the true value, in range) into the
/// computation that uses it: the running total as the left operand of a later operation, or a
/// group total (`g * e = t`) as the right operand of its own `x ± t`.
fn carry_mistake(
    problem: &Problem,
    reference: &Solution,
    before: &[i64],
    rng: &mut ChaCha8Rng,
) -> Option<Mistake> {
    let limit = problem.setting.ranges().limit;
    let mut carried: Vec<(usize, usize, Side, i64)> = Vec::new();
    for step in &reference.steps {
        let operation = step.operation;
        for (position, computation) in step.computations.iter().enumerate() {
            let last = position + 1 == step.computations.len();
            if operation > 0 && last && computation.left == before[operation] {
                carried.push((operation, position, Side::Left, computation.left));
            }
            if position == 1 {
                carried.push((operation, position, Side::Right, computation.right));
            }
        }
    }
    let &(operation, position, side, true_value) = carried.choose(rng)?;
    let value = corrupt_number(true_value, (1, limit), rng)?;
    Some(Mistake::Operand {
        operation,
        position,
        side,
        value,
    })
}

fn draw_mistake(
    problem: &Problem,
    reference: &Solution,
    mistakes: Mistakes,
    rng: &mut ChaCha8Rng,
) -> Option<Mistake> {
    let located: Vec<(usize, usize, Computation)> = reference
        .steps
        .iter()
        .flat_map(|step| {
            step.computations
                .iter()
                .enumerate()
                .map(move |(position, c)| (step.operation, position, *c))
        })
        .collect();
    let slots = problem.slots();
    // Value before each operation: the "stale" operand of a solver that loses its place.
    let mut before = vec![reference.start];
    before.extend(reference.steps.iter().map(|step| {
        step.computations
            .last()
            .map(|c| c.result)
            .unwrap_or_default()
    }));
    let countable: Vec<usize> = problem
        .operations
        .iter()
        .enumerate()
        .filter(|(_, operation)| {
            matches!(
                operation.kind,
                Kind::Gain | Kind::Lose | Kind::GainGroups | Kind::LoseGroups
            )
        })
        .map(|(index, _)| index)
        .collect();
    for _ in 0..64 {
        let choice = rng.random::<f64>();
        let copy = match mistakes {
            Mistakes::Copy => true,
            Mistakes::Carry => false,
            _ => choice < 0.5,
        };
        let mistake = if matches!(mistakes, Mistakes::Copy | Mistakes::Carry | Mistakes::Span) {
            let drawn = if copy {
                copy_mistake(problem, &slots, rng)
            } else {
                carry_mistake(problem, reference, &before, rng)
            };
            let Some(mistake) = drawn else {
                continue;
            };
            mistake
        } else if mistakes == Mistakes::Answer {
            let last = reference.computations().last()?;
            let limit = problem.setting.ranges().limit;
            let Some(value) = obvious_result(last, limit, rng) else {
                continue;
            };
            Mistake::Answer { value }
        } else if mistakes == Mistakes::Obvious {
            let &(operation, position, computation) = located.choose(rng)?;
            let limit = problem.setting.ranges().limit;
            let Some(result) = obvious_result(&computation, limit, rng) else {
                continue;
            };
            Mistake::Arithmetic {
                operation,
                position,
                result,
            }
        } else if choice < 0.30 {
            let &(operation, position, computation) = located.choose(rng)?;
            Mistake::Arithmetic {
                operation,
                position,
                result: corrupt_result(&computation, problem.setting, rng),
            }
        } else if choice < 0.55 {
            let &(operation, position, computation) = located.choose(rng)?;
            let running_left = computation.left == before[operation] && operation > 0;
            let (side, value) = if running_left && rng.random_bool(0.5) {
                (Side::Left, before[operation - 1])
            } else {
                let &(_, value) = slots.choose(rng)?;
                (Side::Right, value)
            };
            Mistake::Operand {
                operation,
                position,
                side,
                value,
            }
        } else if choice < 0.80 {
            let &(slot, value) = slots.choose(rng)?;
            let Some(value) = corrupt_number(value, problem.range(slot), rng) else {
                continue;
            };
            Mistake::Misread { slot, value }
        } else {
            // Skips and repeats only touch plain gains and losses, at equal rates, so wrong
            // solutions have as many computations as right ones on average.
            let operation = *countable.choose(rng)?;
            if rng.random_bool(0.5) {
                Mistake::Skip { operation }
            } else {
                Mistake::Repeat { operation }
            }
        };
        if let Some(solution) = solve(problem, Some(mistake)) {
            if solution.answer != reference.answer {
                return Some(mistake);
            }
        }
    }
    None
}

// ---------------------------------------------------------------- rendering

/// A value a solution line states.
#[derive(Debug, Clone, Copy)]
enum Fact {
    Start(i64),
    Computation(Computation),
    Answer(i64),
}

struct Line {
    text: String,
    facts: Vec<Fact>,
}

fn render(
    problem: &Problem,
    solution: &Solution,
    phrasing: Phrasing,
    rng: &mut ChaCha8Rng,
) -> Vec<Line> {
    if phrasing == Phrasing::Restate {
        return render_restated(problem, solution);
    }
    let (_, items, container, containers) = problem.item;
    let ood = problem.setting == Setting::OutOfDistribution;
    let subject = problem.subject;
    let subject_cap = capitalize(subject);
    let pronoun = problem.pronoun;
    let pronoun_cap = capitalize(pronoun);
    let mut lines = Vec::with_capacity(solution.steps.len() * 2 + 2);
    if rng.random_bool(0.4) {
        let start = solution.start;
        let text = match (ood, rng.random_range(0..2)) {
            (false, 0) => format!("{subject_cap} starts with {start} {items}."),
            (false, _) => format!("At first, {pronoun} has {start} {items}."),
            (true, 0) => format!("The stock starts at {start} {items}."),
            (true, _) => format!("Initially there are {start} {items}."),
        };
        lines.push(Line {
            text,
            facts: vec![Fact::Start(start)],
        });
    }
    for step in &solution.steps {
        let operation = &problem.operations[step.operation];
        let gerund = operation.verb.1;
        let gerund_cap = capitalize(gerund);
        let first = step.computations[0];
        let (x, a, y) = (first.left, first.right, first.result);
        let variant = rng.random_range(0..3);
        let single = |text: String| Line {
            text,
            facts: vec![Fact::Computation(first)],
        };
        match (operation.kind, step.computations.get(1)) {
            (Kind::GainGroups | Kind::LoseGroups, Some(&second)) => {
                let (g, e, t) = (first.left, first.right, first.result);
                let (x, y) = (second.left, second.result);
                let sign = second.sign.symbol();
                let gain = operation.kind == Kind::GainGroups;
                if rng.random_bool(0.35) {
                    let text = match (ood, gain) {
                        (false, _) => format!(
                            "That is {g} * {e} = {t} {items}, so {pronoun} has \
                             {x} {sign} {t} = {y} {items}."
                        ),
                        (true, true) => format!(
                            "That is {g} * {e} = {t} {items}, so the stock becomes \
                             {x} {sign} {t} = {y}."
                        ),
                        (true, false) => format!(
                            "That is {g} * {e} = {t} {items}, so the stock drops to \
                             {x} {sign} {t} = {y}."
                        ),
                    };
                    lines.push(Line {
                        text,
                        facts: vec![Fact::Computation(first), Fact::Computation(second)],
                    });
                } else {
                    let text = match (ood, rng.random_range(0..3)) {
                        (false, 0) => format!("The {containers} hold {g} * {e} = {t} {items}."),
                        (false, 1) => {
                            format!("{g} {containers} of {e} is {g} * {e} = {t} {items}.")
                        }
                        (false, _) => format!("{pronoun_cap} is {gerund} {g} * {e} = {t} {items}."),
                        (true, 0) => {
                            format!("The {g} {containers} contain {g} * {e} = {t} {items}.")
                        }
                        (true, 1) => format!("In total that is {g} * {e} = {t} {items}."),
                        (true, _) => {
                            format!("{gerund_cap} {g} {containers} means {g} * {e} = {t} {items}.")
                        }
                    };
                    lines.push(single(text));
                    let text = match (ood, gain, rng.random_range(0..2)) {
                        (false, _, 0) => {
                            format!("{subject_cap} now has {x} {sign} {t} = {y} {items}.")
                        }
                        (false, _, _) => format!("So {pronoun} has {x} {sign} {t} = {y} {items}."),
                        (true, true, 0) => format!("The stock rises to {x} {sign} {t} = {y}."),
                        (true, false, 0) => format!("The stock falls to {x} {sign} {t} = {y}."),
                        (true, _, _) => format!("Now there are {x} {sign} {t} = {y} {items}."),
                    };
                    lines.push(Line {
                        text,
                        facts: vec![Fact::Computation(second)],
                    });
                }
            }
            (Kind::Gain | Kind::Lose | Kind::GainGroups | Kind::LoseGroups, _) => {
                let sign = first.sign.symbol();
                let left = if sign == '-' { " left" } else { "" };
                let text = match (ood, variant) {
                    (false, 0) => format!(
                        "After {gerund} {a}, {pronoun} has {x} {sign} {a} = {y} {items}{left}."
                    ),
                    (false, 1) => format!("{subject_cap} now has {x} {sign} {a} = {y} {items}."),
                    (false, _) => {
                        format!("{x} {sign} {a} = {y}, so {pronoun} has {y} {items}{left}.")
                    }
                    (true, 0) => format!("{gerund_cap} {a} gives {x} {sign} {a} = {y} {items}."),
                    (true, 1) if sign == '-' => {
                        format!("After that, {x} {sign} {a} = {y} {items} remain.")
                    }
                    (true, 1) => format!("With {a} more, there are {x} {sign} {a} = {y} {items}."),
                    (true, _) => format!("Now there are {x} {sign} {a} = {y} {items}."),
                };
                lines.push(single(text));
            }
            (Kind::Scale, _) => {
                let text = match (ood, variant) {
                    (false, 0) => format!("{subject_cap} now has {x} * {a} = {y} {items}."),
                    (false, 1) => format!("{x} * {a} = {y}, so {pronoun} has {y} {items}."),
                    (false, _) => format!("The number grows to {x} * {a} = {y}."),
                    (true, 0) => format!("Growing {a} times gives {x} * {a} = {y} {items}."),
                    (true, 1) => format!("After growing, there are {x} * {a} = {y} {items}."),
                    (true, _) => format!("Now there are {x} * {a} = {y} {items}."),
                };
                lines.push(single(text));
            }
            (Kind::Share, _) => {
                let text = match (ood, variant) {
                    (false, 0) => format!("Each {container} gets {x} / {a} = {y} {items}."),
                    (false, 1) => {
                        format!("{x} / {a} = {y}, so there are {y} {items} in each {container}.")
                    }
                    (false, _) => {
                        format!("Sharing them gives {x} / {a} = {y} {items} per {container}.")
                    }
                    (true, 0) => format!("Each {container} holds {x} / {a} = {y} {items}."),
                    (true, 1) => format!("Dividing evenly gives {x} / {a} = {y} per {container}."),
                    (true, _) => {
                        format!("Now there are {x} / {a} = {y} {items} in each {container}.")
                    }
                };
                lines.push(single(text));
            }
            (Kind::Price, _) => {
                let text = match (ood, variant) {
                    (false, 0) => format!("{pronoun_cap} gets {x} * {a} = {y} dollars."),
                    (false, 1) => format!("{x} * {a} = {y}, so {pronoun} makes {y} dollars."),
                    (false, _) => format!("Selling them brings {x} * {a} = {y} dollars."),
                    (true, 0) => format!("The sale brings in {x} * {a} = {y} dollars."),
                    (true, 1) => format!("Revenue is {x} * {a} = {y} dollars."),
                    (true, _) => format!("It earns {x} * {a} = {y} dollars."),
                };
                lines.push(single(text));
            }
        }
    }
    lines.push(Line {
        text: format!("The answer is {}.", solution.answer),
        facts: vec![Fact::Answer(solution.answer)],
    });
    lines
}

/// [`Phrasing::Restate`]: the start statement, then per step the question's statement with the
/// solution's operands and the computation, then the answer.
fn render_restated(problem: &Problem, solution: &Solution) -> Vec<Line> {
    let (_, items, container, _) = problem.item;
    let pronoun = problem.pronoun;
    // A statement as the solver quotes it: its numbers, in order, replaced by `numbers`; the
    // final full stop dropped when the line goes on.
    let quote = |index: usize, numbers: &[i64], goes_on: bool| {
        let statement = problem.statements.get(index).map_or("", String::as_str);
        let text = with_numbers(statement, numbers);
        match (goes_on, text.strip_suffix('.')) {
            (true, Some(stem)) => stem.to_owned(),
            _ => text,
        }
    };
    let mut lines = Vec::with_capacity(solution.steps.len() + 2);
    lines.push(Line {
        text: quote(0, &[solution.start], false),
        facts: vec![Fact::Start(solution.start)],
    });
    for step in &solution.steps {
        let operation = &problem.operations[step.operation];
        let first = step.computations[0];
        let (x, a, y) = (first.left, first.right, first.result);
        let sign = first.sign.symbol();
        let line = match (operation.kind, step.computations.get(1)) {
            (Kind::GainGroups | Kind::LoseGroups, Some(&second)) => {
                let stem = quote(step.operation + 1, &[x, a], true);
                let (left, sign, result) = (second.left, second.sign.symbol(), second.result);
                Line {
                    text: format!(
                        "{stem}, that is {x} * {a} = {y} {items}, so {pronoun} has \
                         {left} {sign} {y} = {result} {items}."
                    ),
                    facts: vec![Fact::Computation(first), Fact::Computation(second)],
                }
            }
            (kind, _) => {
                let operands: &[i64] = match kind {
                    Kind::GainGroups | Kind::LoseGroups => &[x, a],
                    _ => &[a],
                };
                let stem = quote(step.operation + 1, operands, true);
                let text = match kind {
                    Kind::Share => {
                        format!("{stem}, so each {container} gets {x} {sign} {a} = {y} {items}.")
                    }
                    Kind::Price => {
                        format!("{stem}, so {pronoun} gets {x} {sign} {a} = {y} dollars.")
                    }
                    _ => format!("{stem}, so {pronoun} has {x} {sign} {a} = {y} {items}."),
                };
                Line {
                    text,
                    facts: vec![Fact::Computation(first)],
                }
            }
        };
        lines.push(line);
    }
    lines.push(Line {
        text: format!("The answer is {}.", solution.answer),
        facts: vec![Fact::Answer(solution.answer)],
    });
    lines
}

/// `text` with its runs of digits replaced, in order, by `numbers` (runs past the end of
/// `numbers` are kept): "gets 3 boxes of 12" with `[4, 12]` → "gets 4 boxes of 12".
fn with_numbers(text: &str, numbers: &[i64]) -> String {
    let mut out = String::with_capacity(text.len() + 4);
    let mut numbers = numbers.iter();
    let mut rest = text;
    while let Some(start) = rest.find(|c: char| c.is_ascii_digit()) {
        out.push_str(&rest[..start]);
        let digits = &rest[start..];
        let end = digits
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(digits.len());
        match numbers.next() {
            Some(number) => out.push_str(&number.to_string()),
            None => out.push_str(&digits[..end]),
        }
        rest = &digits[end..];
    }
    out.push_str(rest);
    out
}

/// Index of the first line stating a value that differs from `reference` (or a computation
/// whose arithmetic is wrong), if any.
fn first_wrong_line(lines: &[Line], reference: &Solution) -> Option<usize> {
    let mut expected = reference.computations();
    lines.iter().position(|line| {
        line.facts.iter().any(|fact| match *fact {
            Fact::Start(value) => value != reference.start,
            Fact::Computation(computation) => {
                let exact = computation.sign.apply(computation.left, computation.right);
                let want = expected.next().map(|c| c.result);
                exact != Some(computation.result) || want != Some(computation.result)
            }
            Fact::Answer(value) => value != reference.answer,
        })
    })
}

// ---------------------------------------------------------------- one question

fn stream(config: &SynthConfig, setting: Setting, index: usize, sample: usize) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&config.seed.to_le_bytes());
    key[8] = setting.key_byte();
    let mut rng = ChaCha8Rng::from_seed(key);
    rng.set_stream(((index as u64) << 16) | sample as u64);
    rng
}

/// The share of wrong samples of one question: `u^((1 - r) / r)` has mean `r`.
fn question_error_rate(error_rate: f64, uniform: f64) -> f64 {
    if error_rate <= 0.0 {
        0.0
    } else if error_rate >= 1.0 {
        1.0
    } else {
        uniform.powf((1.0 - error_rate) / error_rate)
    }
}

/// The stream a sample's lines are phrased from: its own (`rng`), or its question's.
fn phrasing_stream(
    config: &SynthConfig,
    setting: Setting,
    index: usize,
    rng: ChaCha8Rng,
) -> ChaCha8Rng {
    match config.phrasing {
        Phrasing::Sample => rng,
        Phrasing::Question | Phrasing::Restate => stream(config, setting, index, PHRASING_STREAM),
    }
}

fn question_rows(config: &SynthConfig, setting: Setting, index: usize) -> Vec<Generation> {
    let mut rng = stream(config, setting, index, 0);
    let problem = Problem::draw(setting, &mut rng);
    let rate = question_error_rate(config.error_rate, rng.random::<f64>());
    // The reference trajectory always exists: Problem::draw keeps it in range.
    let reference = solve(&problem, None);
    // Common mistakes (a shared misread, the same slip) make wrong answers cluster.
    let pool: Vec<Mistake> = match &reference {
        Some(reference) => (0..2)
            .filter_map(|_| draw_mistake(&problem, reference, config.mistakes, &mut rng))
            .collect(),
        None => Vec::new(),
    };
    let question_id = format!("{}-{index:06}", setting.benchmark());
    let expected_answer = reference.as_ref().map(|r| r.answer.to_string());
    let mut rows = Vec::with_capacity(config.samples);
    for sample in 0..config.samples {
        let mut rng = stream(config, setting, index, sample + 1);
        let wrong = rng.random::<f64>() < rate;
        let (Some(reference), true) = (&reference, wrong) else {
            let mut phrasing = phrasing_stream(config, setting, index, rng);
            rows.push(render_row(
                &problem,
                reference.as_ref(),
                None,
                config.phrasing,
                &mut phrasing,
            ));
            continue;
        };
        let pick = rng.random::<f64>();
        let mistake = match pool.as_slice() {
            [common, ..] if pick < 0.35 => Some(*common),
            [_, second, ..] if pick < 0.55 => Some(*second),
            _ => draw_mistake(&problem, reference, config.mistakes, &mut rng)
                .or(pool.first().copied()),
        };
        let solution = mistake.and_then(|m| solve(&problem, Some(m)));
        let mut phrasing = phrasing_stream(config, setting, index, rng);
        rows.push(render_row(
            &problem,
            Some(reference),
            solution,
            config.phrasing,
            &mut phrasing,
        ));
    }
    for (sample, row) in rows.iter_mut().enumerate() {
        row.question_id = question_id.clone();
        row.expected_answer = expected_answer.clone();
        row.sample = format!("s{sample}");
    }
    rows
}

/// One row; `wrong` is the mistaken solution, or `None` for a correct sample.
fn render_row(
    problem: &Problem,
    reference: Option<&Solution>,
    wrong: Option<Solution>,
    phrasing: Phrasing,
    rng: &mut ChaCha8Rng,
) -> Generation {
    let solution = wrong.as_ref().or(reference);
    let lines = solution
        .map(|solution| render(problem, solution, phrasing, rng))
        .unwrap_or_default();
    let first_error_line = match (reference, &wrong) {
        (Some(reference), Some(_)) => first_wrong_line(&lines, reference),
        _ => None,
    };
    let mut first_error_char = None;
    let mut offset = 0usize;
    let mut response = String::new();
    for (index, line) in lines.iter().enumerate() {
        if index > 0 {
            response.push('\n');
            offset += 1;
        }
        if first_error_line == Some(index) {
            first_error_char = i32::try_from(offset).ok();
        }
        response.push_str(&line.text);
        offset += line.text.chars().count();
    }
    Generation {
        question: problem.question.clone(),
        response,
        is_correct: match (reference, solution) {
            (Some(reference), Some(solution)) => solution.answer == reference.answer,
            _ => false,
        },
        predicted_answer: solution.map(|s| s.answer.to_string()),
        benchmark: problem.setting.benchmark().to_owned(),
        first_error_char,
        ..Generation::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, HashMap};

    fn config(split: Split, questions: usize, samples: usize) -> SynthConfig {
        SynthConfig {
            questions,
            samples,
            error_rate: 0.5,
            split,
            seed: 11,
            mistakes: Mistakes::Subtle,
            phrasing: Phrasing::Sample,
        }
    }

    fn by_question(rows: &[Generation]) -> BTreeMap<&str, Vec<&Generation>> {
        let mut groups: BTreeMap<&str, Vec<&Generation>> = BTreeMap::new();
        for row in rows {
            groups.entry(&row.question_id).or_default().push(row);
        }
        groups
    }

    #[test]
    fn same_seed_same_rows_other_seed_other_rows() {
        let a = generate(&config(Split::Both, 20, 4)).unwrap();
        let b = generate(&config(Split::Both, 20, 4)).unwrap();
        assert_eq!(a, b);
        let c = generate(&SynthConfig {
            seed: 12,
            ..config(Split::Both, 20, 4)
        })
        .unwrap();
        assert_ne!(a[0].question, c[0].question);
    }

    #[test]
    fn fewer_questions_or_samples_give_a_prefix() {
        let full = generate(&config(Split::Id, 30, 8)).unwrap();
        let fewer_questions = generate(&config(Split::Id, 10, 8)).unwrap();
        assert_eq!(fewer_questions[..], full[..80]);
        let fewer_samples = generate(&config(Split::Id, 30, 3)).unwrap();
        for (question, rows) in by_question(&fewer_samples) {
            let all = &by_question(&full)[question];
            for (row, longer) in rows.iter().zip(all) {
                assert_eq!(row, longer);
            }
        }
        // `both` is the ID prefix followed by the OOD prefix.
        let both = generate(&config(Split::Both, 5, 8)).unwrap();
        let ood = generate(&config(Split::Ood, 2, 8)).unwrap();
        assert_eq!(both[..24], full[..24]);
        assert_eq!(both[24..], ood[..]);
    }

    #[test]
    fn rows_follow_the_schema_conventions() {
        let rows = generate(&config(Split::Both, 6, 8)).unwrap();
        assert_eq!(rows.len(), 48);
        assert_eq!(rows[0].question_id, "synth-id-000000");
        assert_eq!(rows[47].question_id, "synth-ood-000002");
        assert_eq!(rows[47].sample, "s7");
        for row in &rows {
            assert!(row.question_id.starts_with(&row.benchmark));
            let last = row.response.rsplit('\n').next().unwrap();
            let predicted = row.predicted_answer.as_deref().unwrap();
            assert_eq!(last, format!("The answer is {predicted}."));
            assert_eq!(row.is_correct, row.predicted_answer == row.expected_answer);
            assert_eq!(row.is_correct, row.first_error_char.is_none());
            if let Some(offset) = row.first_error_char {
                // Char offsets of a line start: 0 or just after a newline.
                let offset = offset as usize;
                let before: String = row.response.chars().take(offset).collect();
                assert!(
                    offset == 0 || before.ends_with('\n'),
                    "{offset} in {:?}",
                    row.response
                );
            }
        }
        let frame = generate_frame(&config(Split::Id, 2, 2)).unwrap();
        assert_eq!(frame.height(), 4);
    }

    #[test]
    fn error_rate_zero_and_one_are_exact_and_the_mean_is_honoured() {
        let right = generate(&SynthConfig {
            error_rate: 0.0,
            ..config(Split::Both, 40, 8)
        })
        .unwrap();
        assert!(right.iter().all(|r| r.is_correct));
        let wrong = generate(&SynthConfig {
            error_rate: 1.0,
            ..config(Split::Both, 40, 8)
        })
        .unwrap();
        assert!(wrong.iter().all(|r| !r.is_correct));
        for rate in [0.2, 0.5, 0.8] {
            let rows = generate(&SynthConfig {
                error_rate: rate,
                ..config(Split::Both, 400, 8)
            })
            .unwrap();
            let share = rows.iter().filter(|r| !r.is_correct).count() as f64 / rows.len() as f64;
            // 400 questions with uniform-ish per-question rates: sd of the share ≈ 0.015.
            assert!((share - rate).abs() < 0.06, "rate {rate}: share {share}");
        }
    }

    #[test]
    fn questions_differ_in_difficulty_and_wrong_answers_collide() {
        let rows = generate(&config(Split::Both, 200, 8)).unwrap();
        let groups = by_question(&rows);
        let wrong_counts: Vec<usize> = groups
            .values()
            .map(|g| g.iter().filter(|r| !r.is_correct).count())
            .collect();
        assert!(wrong_counts.iter().any(|&c| c <= 1));
        assert!(wrong_counts.iter().any(|&c| c >= 7));
        // Questions with a wrong answer given by two or more samples.
        let colliding = groups
            .values()
            .filter(|g| {
                let mut answers: HashMap<&str, usize> = HashMap::new();
                for row in g.iter().filter(|r| !r.is_correct) {
                    *answers
                        .entry(row.predicted_answer.as_deref().unwrap())
                        .or_default() += 1;
                }
                answers.values().any(|&n| n >= 2)
            })
            .count();
        assert!(
            colliding > groups.len() / 3,
            "{colliding} of {}",
            groups.len()
        );
        // Right samples vary in phrasing.
        let distinct_right = groups
            .values()
            .filter(|g| {
                let right: std::collections::HashSet<&str> = g
                    .iter()
                    .filter(|r| r.is_correct)
                    .map(|r| r.response.as_str())
                    .collect();
                right.len() >= 2
            })
            .count();
        assert!(distinct_right > groups.len() / 2);
    }

    #[test]
    fn ood_has_more_steps_and_larger_numbers() {
        let rows = generate(&SynthConfig {
            error_rate: 0.0,
            ..config(Split::Both, 200, 1)
        })
        .unwrap();
        let stats = |benchmark: &str| {
            let subset: Vec<&Generation> =
                rows.iter().filter(|r| r.benchmark == benchmark).collect();
            let equations = subset
                .iter()
                .map(|r| r.response.matches(" = ").count())
                .sum::<usize>() as f64
                / subset.len() as f64;
            let starts: Vec<i64> = subset
                .iter()
                .filter_map(|r| {
                    r.question
                        .split(|c: char| !c.is_ascii_digit())
                        .find(|s| !s.is_empty())
                        .and_then(|s| s.parse().ok())
                })
                .collect();
            (
                equations,
                *starts.iter().max().unwrap(),
                *starts.iter().min().unwrap(),
            )
        };
        let (id_equations, id_max, _) = stats("synth-id");
        let (ood_equations, _, ood_min) = stats("synth-ood");
        assert!(
            ood_equations > id_equations + 1.5,
            "{id_equations} vs {ood_equations}"
        );
        assert!(
            ood_min > id_max,
            "OOD starts at {ood_min}, ID up to {id_max}"
        );
    }

    #[test]
    fn each_mistake_kind_propagates_to_a_wrong_answer() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let mut kinds = [0usize; 5];
        for _ in 0..300 {
            let problem = Problem::draw(Setting::InDistribution, &mut rng);
            let reference = solve(&problem, None).unwrap();
            // The reference chains: every computation's result is the next one's running value.
            assert!(reference
                .computations()
                .all(|c| c.sign.apply(c.left, c.right) == Some(c.result)));
            let Some(mistake) = draw_mistake(&problem, &reference, Mistakes::Subtle, &mut rng)
            else {
                continue;
            };
            let wrong = solve(&problem, Some(mistake)).unwrap();
            assert_ne!(wrong.answer, reference.answer);
            let index = match mistake {
                Mistake::Arithmetic { .. } => 0,
                Mistake::Operand { .. } => 1,
                Mistake::Skip { .. } => 2,
                Mistake::Repeat { .. } => 3,
                Mistake::Misread { .. } => 4,
                Mistake::Answer { .. } => unreachable!("subtle mode states the answer it computed"),
            };
            kinds[index] += 1;
            // Only the injected mistake breaks the arithmetic; all else follows from it.
            let broken = wrong
                .computations()
                .filter(|c| c.sign.apply(c.left, c.right) != Some(c.result))
                .count();
            assert_eq!(broken, usize::from(index == 0), "{mistake:?}");
        }
        assert!(kinds.iter().all(|&n| n > 10), "{kinds:?}");
    }

    #[test]
    fn answer_mistakes_keep_the_work_and_change_only_the_stated_answer() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut drawn = 0;
        for _ in 0..200 {
            let problem = Problem::draw(Setting::InDistribution, &mut rng);
            let reference = solve(&problem, None).unwrap();
            let Some(mistake) = draw_mistake(&problem, &reference, Mistakes::Answer, &mut rng)
            else {
                continue;
            };
            drawn += 1;
            let Mistake::Answer { value } = mistake else {
                panic!("answer mode drew {mistake:?}");
            };
            let wrong = solve(&problem, Some(mistake)).unwrap();
            assert_eq!(wrong.answer, value);
            assert!(
                (value - reference.answer).abs() >= 5,
                "{value} vs {}",
                reference.answer
            );
            let same_work = wrong
                .computations()
                .zip(reference.computations())
                .all(|(a, b)| (a.left, a.right, a.result) == (b.left, b.right, b.result));
            assert!(same_work && wrong.computations().count() == reference.computations().count());
            // The first wrong line is the answer line, the last one.
            let lines = render(&problem, &wrong, Phrasing::Sample, &mut rng);
            assert_eq!(first_wrong_line(&lines, &reference), Some(lines.len() - 1));
        }
        assert!(drawn > 150, "{drawn} of 200 problems got an answer mistake");
    }

    #[test]
    fn span_mistakes_keep_every_computation_right_and_sit_mid_solution() {
        let mut rng = ChaCha8Rng::seed_from_u64(21);
        for mistakes in [Mistakes::Copy, Mistakes::Carry, Mistakes::Span] {
            let (mut copies, mut carries) = (0, 0);
            for _ in 0..300 {
                let problem = Problem::draw(Setting::InDistribution, &mut rng);
                let reference = solve(&problem, None).unwrap();
                let Some(mistake) = draw_mistake(&problem, &reference, mistakes, &mut rng) else {
                    continue;
                };
                let wrong = solve(&problem, Some(mistake)).unwrap();
                assert_ne!(wrong.answer, reference.answer);
                // Found only by comparing spans: each computation is right for its operands.
                assert!(wrong
                    .computations()
                    .all(|c| c.sign.apply(c.left, c.right) == Some(c.result)));
                match mistake {
                    Mistake::Misread { value, .. } => {
                        copies += 1;
                        // The copy is a number the question never states.
                        assert!(problem.slots().iter().all(|&(_, stated)| stated != value));
                    }
                    Mistake::Operand {
                        operation,
                        position,
                        side,
                        value,
                    } => {
                        carries += 1;
                        // The operand replaced is a value computed earlier, not a given.
                        let step = reference
                            .steps
                            .iter()
                            .find(|s| s.operation == operation)
                            .unwrap();
                        let true_value = match side {
                            Side::Left => step.computations[position].left,
                            Side::Right => step.computations[position].right,
                        };
                        assert_ne!(value, true_value);
                        let computed: Vec<i64> =
                            reference.computations().map(|c| c.result).collect();
                        assert!(computed.contains(&true_value), "{mistake:?}");
                    }
                    other => panic!("{mistakes:?} drew {other:?}"),
                }
                // Mid-solution: the first wrong line is a computation, never the answer line.
                let lines = render(&problem, &wrong, Phrasing::Sample, &mut rng);
                let line = first_wrong_line(&lines, &reference).unwrap();
                assert!(line < lines.len() - 1, "{mistake:?}");
            }
            match mistakes {
                Mistakes::Copy => assert!(copies > 150 && carries == 0, "{copies} {carries}"),
                Mistakes::Carry => assert!(carries > 150 && copies == 0, "{copies} {carries}"),
                _ => assert!(copies > 60 && carries > 60, "{copies} {carries}"),
            }
        }
    }

    #[test]
    fn question_phrasing_makes_minimal_pairs() {
        let rows = generate(&SynthConfig {
            phrasing: Phrasing::Question,
            mistakes: Mistakes::Span,
            ..config(Split::Both, 40, 8)
        })
        .unwrap();
        let mut compared = 0;
        for samples in by_question(&rows).values() {
            let Some(right) = samples.iter().find(|row| row.is_correct) else {
                continue;
            };
            for row in samples {
                if row.is_correct {
                    // Right samples of a question are one text.
                    assert_eq!(row.response, right.response);
                    continue;
                }
                // A wrong one is the right text up to its first error, and its lines keep the
                // right one's words: only numbers differ.
                let error = row.first_error_char.unwrap() as usize;
                let prefix: String = row.response.chars().take(error).collect();
                assert!(right.response.starts_with(&prefix), "{prefix:?}");
                let words = |text: &str| -> Vec<String> {
                    text.split(|c: char| c.is_ascii_digit())
                        .map(str::to_owned)
                        .collect()
                };
                if row.response.lines().count() == right.response.lines().count() {
                    compared += 1;
                    for (wrong, right) in row.response.lines().zip(right.response.lines()) {
                        let strip = |t: &str| words(t).concat();
                        assert_eq!(strip(wrong), strip(right));
                    }
                }
            }
        }
        assert!(compared > 40, "{compared}");
        // Per-sample phrasing (the default) varies the right samples' texts.
        let varied = generate(&config(Split::Id, 40, 8)).unwrap();
        let distinct = by_question(&varied)
            .values()
            .filter(|samples| {
                let texts: std::collections::BTreeSet<&str> = samples
                    .iter()
                    .filter(|row| row.is_correct)
                    .map(|row| row.response.as_str())
                    .collect();
                texts.len() > 1
            })
            .count();
        assert!(distinct > 10, "{distinct}");
    }

    #[test]
    fn restated_lines_quote_the_question_and_a_copy_changes_one_number_in_the_quote() {
        let rows = generate(&SynthConfig {
            phrasing: Phrasing::Restate,
            mistakes: Mistakes::Copy,
            ..config(Split::Both, 40, 8)
        })
        .unwrap();
        let numbers = |text: &str| -> Vec<String> {
            text.split(|c: char| !c.is_ascii_digit())
                .filter(|run| !run.is_empty())
                .map(str::to_owned)
                .collect()
        };
        let (mut quoted, mut copies) = (0, 0);
        for samples in by_question(&rows).values() {
            let question = &samples[0].question;
            for row in samples {
                let lines: Vec<&str> = row.response.lines().collect();
                // Every line but the answer quotes one of the question's statements, in order:
                // the words agree, and a right sample's numbers too.
                let mut rest = question.as_str();
                let mut changed = Vec::new();
                for line in &lines[..lines.len() - 1] {
                    let stem = line
                        .split(", ")
                        .take_while(|part| {
                            !part.starts_with("so ") && !part.starts_with("that is ")
                        })
                        .collect::<Vec<_>>()
                        .join(", ");
                    let stem = stem.trim_end_matches('.');
                    let (index, statement) = rest
                        .split_inclusive(". ")
                        .enumerate()
                        .find(|(_, sentence)| {
                            let words = |t: &str| -> String {
                                t.split(|c: char| c.is_ascii_digit()).collect()
                            };
                            words(sentence.trim_end().trim_end_matches('.')) == words(stem)
                        })
                        .unwrap_or_else(|| panic!("{stem:?} not in {rest:?}"));
                    let statement = statement.trim_end().trim_end_matches('.');
                    for (said, stated) in numbers(stem).iter().zip(numbers(statement)) {
                        if *said != stated {
                            changed.push(said.clone());
                        }
                    }
                    let skip: usize = rest
                        .split_inclusive(". ")
                        .take(index + 1)
                        .map(str::len)
                        .sum();
                    rest = &rest[skip..];
                    quoted += 1;
                }
                if row.is_correct {
                    assert!(changed.is_empty(), "{}", row.response);
                } else if !changed.is_empty() {
                    // A copy mistake: one quoted number differs, and it is none of the
                    // question's numbers.
                    assert_eq!(changed.len(), 1, "{}", row.response);
                    assert!(!numbers(question).contains(&changed[0]), "{}", row.response);
                    copies += 1;
                }
            }
        }
        assert!(quoted > 500 && copies > 60, "{quoted} {copies}");
    }

    #[test]
    fn with_numbers_replaces_digit_runs_in_order() {
        assert_eq!(
            with_numbers("gets 3 boxes of 12 pens.", &[4, 12]),
            "gets 4 boxes of 12 pens."
        );
        assert_eq!(
            with_numbers("gets 3 boxes of 12 pens.", &[7]),
            "gets 7 boxes of 12 pens."
        );
        assert_eq!(with_numbers("doubles.", &[2]), "doubles.");
        assert_eq!(with_numbers("105", &[98]), "98");
    }

    #[test]
    fn hand_worked_problem_renders_its_error_line() {
        // 12 apples, gain 5, lose 4 => 12 + 5 = 17, 17 - 4 = 13. Misread 5 as 6:
        // 12 + 6 = 18 (first wrong line), 18 - 4 = 14.
        let problem = Problem {
            setting: Setting::InDistribution,
            subject: "Lena",
            pronoun: "she",
            item: ID_ITEMS[0],
            start: 12,
            operations: vec![
                Operation {
                    kind: Kind::Gain,
                    numbers: [5, 0],
                    verb: ID_GAIN[0],
                },
                Operation {
                    kind: Kind::Lose,
                    numbers: [4, 0],
                    verb: ID_LOSE[0],
                },
            ],
            question: String::new(),
            statements: Vec::new(),
        };
        let reference = solve(&problem, None).unwrap();
        assert_eq!(reference.answer, 13);
        let mistake = Mistake::Misread {
            slot: Slot::Operation(0, 0),
            value: 6,
        };
        let wrong = solve(&problem, Some(mistake)).unwrap();
        let results: Vec<i64> = wrong.computations().map(|c| c.result).collect();
        assert_eq!(results, [18, 14]);
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let lines = render(&problem, &wrong, Phrasing::Sample, &mut rng);
        let first = first_wrong_line(&lines, &reference).unwrap();
        assert!(
            lines[first].text.contains("12 + 6 = 18"),
            "{}",
            lines[first].text
        );
        let skipped = solve(&problem, Some(Mistake::Skip { operation: 0 })).unwrap();
        assert_eq!(skipped.answer, 8);
        let repeated = solve(&problem, Some(Mistake::Repeat { operation: 1 })).unwrap();
        assert_eq!(repeated.answer, 9);
    }

    #[test]
    fn corruptions_are_plausible() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        assert_eq!(swap_last_digits(47), Some(74));
        assert_eq!(swap_last_digits(123), Some(132));
        assert_eq!(swap_last_digits(44), None);
        assert_eq!(swap_last_digits(30), None);
        for number in 2..=25 {
            let misread = corrupt_number(number, ID_RANGES.amount, &mut rng).unwrap();
            assert!(
                (2..=25).contains(&misread) && misread != number,
                "{number} -> {misread}"
            );
        }
        // 2 and 3 ("doubles", "triples") can only be misread as each other.
        assert_eq!(corrupt_number(2, ID_RANGES.factor, &mut rng), Some(3));
        assert_eq!(corrupt_number(7, (7, 7), &mut rng), None);
    }

    #[test]
    fn invalid_configs_are_usage_errors() {
        for bad in [
            SynthConfig {
                error_rate: -0.1,
                ..SynthConfig::default()
            },
            SynthConfig {
                error_rate: f64::NAN,
                ..SynthConfig::default()
            },
            SynthConfig {
                samples: 0,
                ..SynthConfig::default()
            },
        ] {
            assert!(matches!(generate(&bad), Err(Error::Usage(_))), "{bad:?}");
        }
    }

    #[test]
    fn per_question_error_rate_has_the_configured_mean() {
        // E[u^k] = 1 / (k + 1) with k = (1 - r) / r gives r; midpoint rule over u.
        for rate in [0.1, 0.5, 0.9] {
            let n = 100_000;
            let mean = (0..n)
                .map(|i| question_error_rate(rate, (i as f64 + 0.5) / n as f64))
                .sum::<f64>()
                / n as f64;
            assert!((mean - rate).abs() < 1e-3, "{rate}: {mean}");
        }
    }
}
