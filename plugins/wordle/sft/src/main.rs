//! Prints `N` Wordle games as SFT conversations, a JSON line each (see the library).

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(64, |s| s.parse().expect("N: how many games"));
    for line in wordle_sft::games(n) {
        println!("{line}");
    }
}
