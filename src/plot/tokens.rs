pub fn diverging_color() {}
pub fn readable_tokens() {}
pub fn token_row() {}
pub fn tokens_figure() {}
pub fn tokens_html() {}
pub fn tokens_svg() {}
pub struct RowSelector;
pub struct TokenRow;
